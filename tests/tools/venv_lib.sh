# What the build_*_venv.sh scripts share (sourced, not run): they work from the repository root,
# and each builds a venv of its own apart from spotctl's, marked ready by a stamp file in it.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

# new_venv DIR: a fresh venv at DIR with a current pip.
new_venv() {
  python3 -m venv "$1"
  "$1/bin/python" -m pip install --quiet --upgrade pip
}
