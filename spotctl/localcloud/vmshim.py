"""What a local-cloud VM's operating system does, for the commands spotctl's user_data uses.

The local cloud runs a VM's user_data as a real process with ``SPOTCTL_VM_ROOT`` set to the VM's
folder and this folder's shims first on its PATH. Each shim is this module run under the
command's name (``python -m spotctl.localcloud.vmshim lsblk ...``):

- a VM's disks are files in ``$SPOTCTL_VM_DIR/dev/`` (one per attached volume, written by the
  local cloud when it attaches the volume: ``{"volume": id, "size": bytes}``); a volume's data
  lives in ``$SPOTCTL_LC_VOLUMES/<id>/data`` and its filesystem label in ``.../label``, so what a
  VM writes on the volume is there for the next VM it is attached to;
- ``lsblk -dpnbo NAME,SIZE,TYPE,FSTYPE``, ``blkid -L LABEL``, ``mkfs.ext4 -q -L LABEL DEV``
  (empties the volume), ``mount DEV|LABEL=L DIR`` (the directory becomes the volume's data),
  ``mountpoint -q DIR``;
- ``systemctl daemon-reload | enable [--now] UNIT | start UNIT | stop UNIT``: a started unit runs
  under ``supervise`` (ExecStart, Environment, EnvironmentFile, Restart=on-failure,
  TimeoutStopSec), detached, its pid in ``$SPOTCTL_VM_DIR/run/UNIT.pid``;
- ``vllm --version`` answers the local cloud's vLLM version; ``vllm serve ARGS`` checks ARGS
  against vLLM's own option list (``spotctl/engine/vllm_flags.json``, generated from vLLM's
  parser) and then runs the built-in engine on the VM's address and the requested port,
  serving the ``--served-model-name`` (so wrong arguments fail the boot, as they would on a GPU).

Anything else is refused loudly: a script that needs more of an OS than this fails here first.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

SHIMS = ("lsblk", "blkid", "mkfs.ext4", "mount", "mountpoint", "systemctl", "vllm")


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        sys.exit(f"{name} is not set: this shim runs only inside a local-cloud VM")
    return value


def vm_dir() -> Path:
    return Path(_env("SPOTCTL_VM_DIR"))


def volumes_dir() -> Path:
    return Path(_env("SPOTCTL_LC_VOLUMES"))


def disks() -> list[tuple[Path, dict]]:
    out = []
    for dev in sorted((vm_dir() / "dev").glob("vd*")):
        try:
            out.append((dev, json.loads(dev.read_text())))
        except (OSError, ValueError):
            continue
    return out


def volume_of(dev: str) -> Path:
    if dev.startswith("LABEL="):
        found = _by_label(dev[len("LABEL="):])
        if found is None:
            sys.exit(f"mount: can't find {dev}")
        dev = str(found)
    try:
        info = json.loads(Path(dev).read_text())
    except (OSError, ValueError):
        sys.exit(f"{dev}: not a block device")
    return volumes_dir() / str(info["volume"])


def _label(vol: Path) -> str | None:
    try:
        return (vol / "label").read_text().strip() or None
    except OSError:
        return None


def _by_label(label: str) -> Path | None:
    for dev, info in disks():
        if _label(volumes_dir() / str(info["volume"])) == label:
            return dev
    return None


# -- the commands ----------------------------------------------------------------------------
def lsblk(args: list[str]) -> int:
    if args[:2] != ["-dpnbo", "NAME,SIZE,TYPE,FSTYPE"]:
        sys.exit(f"lsblk: only -dpnbo NAME,SIZE,TYPE,FSTYPE is emulated, got {args}")
    for dev, info in disks():
        fs = "ext4" if _label(volumes_dir() / str(info["volume"])) else ""
        print(f"{dev} {info['size']} disk {fs}".rstrip())
    return 0


def blkid(args: list[str]) -> int:
    if len(args) != 2 or args[0] != "-L":
        sys.exit(f"blkid: only -L LABEL is emulated, got {args}")
    dev = _by_label(args[1])
    if dev is None:
        return 2
    print(dev)
    return 0


def mkfs_ext4(args: list[str]) -> int:
    label, dev = None, None
    it = iter(args)
    for a in it:
        if a == "-L":
            label = next(it)
        elif a == "-q":
            continue
        else:
            dev = a
    if not label or not dev:
        sys.exit(f"mkfs.ext4: expected -L LABEL DEVICE, got {args}")
    vol = volume_of(dev)
    import shutil

    shutil.rmtree(vol / "data", ignore_errors=True)
    (vol / "data").mkdir(parents=True)
    (vol / "label").write_text(label)
    return 0


def mount(args: list[str]) -> int:
    if len(args) != 2:
        sys.exit(f"mount: expected DEVICE DIR, got {args}")
    vol = volume_of(args[0])
    if _label(vol) is None:
        sys.exit(f"mount: {args[0]}: wrong fs type (not formatted)")
    target = Path(args[1])
    if target.is_symlink():
        sys.exit(f"mount: {target}: already mounted")
    if not target.is_dir() or any(target.iterdir()):
        sys.exit(f"mount: {target}: must be an existing empty directory here")
    target.rmdir()
    target.symlink_to(vol / "data", target_is_directory=True)
    return 0


def mountpoint(args: list[str]) -> int:
    target = Path(args[-1])
    return 0 if target.is_symlink() and target.resolve().is_relative_to(
        volumes_dir().resolve()) else 1


def systemctl(args: list[str]) -> int:
    if not args:
        sys.exit("systemctl: no command")
    cmd, rest = args[0], args[1:]
    now = "--now" in rest
    units = [a for a in rest if not a.startswith("-")]
    root = Path(_env("SPOTCTL_VM_ROOT"))
    if cmd == "daemon-reload":
        return 0
    if cmd == "enable":
        for unit in units:
            wants = root / "etc/systemd/system/multi-user.target.wants"
            wants.mkdir(parents=True, exist_ok=True)
            link = wants / unit
            if not link.is_symlink():
                link.symlink_to(root / "etc/systemd/system" / unit)
            if now:
                start_unit(root, unit)
        return 0
    if cmd == "start":
        for unit in units:
            start_unit(root, unit)
        return 0
    if cmd == "stop":
        for unit in units:
            stop_unit(unit)
        return 0
    sys.exit(f"systemctl: {cmd!r} is not emulated")


def start_unit(root: Path, unit: str) -> None:
    path = root / "etc/systemd/system" / unit
    if not path.is_file():
        sys.exit(f"systemctl: unit {unit} not found")
    pidfile = vm_dir() / "run" / f"{unit}.pid"
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    if pidfile.exists() and _alive(int(pidfile.read_text() or 0)):
        return
    log = open(vm_dir() / f"{unit}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(  # noqa: S603 - our own supervisor
        [sys.executable, "-m", "spotctl.localcloud.vmshim", "supervise", str(path)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, env=_base_env())
    pidfile.write_text(str(proc.pid))


def stop_unit(unit: str, timeout_s: float = 30.0) -> None:
    pidfile = vm_dir() / "run" / f"{unit}.pid"
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return
    stop_pid(pid, timeout_s)
    pidfile.unlink(missing_ok=True)


def stop_pid(pid: int, timeout_s: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s  # clock-ok: a real process stopping
    while time.monotonic() < deadline and _alive(pid):  # clock-ok
        time.sleep(0.05)  # clock-ok
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _base_env() -> dict[str, str]:
    keep = ("PATH", "SPOTCTL_VM_ROOT", "SPOTCTL_VM_DIR", "SPOTCTL_VM_IP", "SPOTCTL_LC_VOLUMES",
            "SPOTCTL_LC_VLLM_VERSION", "SPOTCTL_LC_PID", "PYTHONPATH", "HOME", "LANG")
    return {k: v for k, v in os.environ.items() if k in keep}


# -- systemd's service manager, for one unit -------------------------------------------------------
def parse_unit(text: str) -> dict[str, list[str]]:
    section, out = "", {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def unit_env(unit: dict[str, list[str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for path in unit.get("Service.EnvironmentFile", []):
        optional = path.startswith("-")
        try:
            lines = Path(path.lstrip("-")).read_text().splitlines()
        except OSError:
            if optional:
                continue
            raise
        for line in lines:
            if "=" in line and not line.lstrip().startswith("#"):
                k, _, v = line.partition("=")
                env[k.strip()] = v.strip()
    for value in unit.get("Service.Environment", []):
        for item in shlex.split(value):
            k, _, v = item.partition("=")
            env[k] = v
    return env


def supervise(unit_path: str) -> int:
    """Run one unit's ExecStart, restarting it on failure, until SIGTERM (then stop it within
    TimeoutStopSec) or until the local cloud that started this VM is gone."""
    unit = parse_unit(Path(unit_path).read_text())
    argv = shlex.split(unit["Service.ExecStart"][-1])
    restart = unit.get("Service.Restart", ["no"])[-1]
    restart_s = min(float(unit.get("Service.RestartSec", ["0.1"])[-1] or 0.1), 2.0)
    stop_s = float(unit.get("Service.TimeoutStopSec", ["90"])[-1])
    env = {**_base_env(), **unit_env(unit)}
    lc_pid = int(os.environ.get("SPOTCTL_LC_PID", "0") or 0)
    stopping = {"now": False}
    child: dict[str, subprocess.Popen | None] = {"p": None}

    def on_term(signum, frame) -> None:
        stopping["now"] = True
        proc = child["p"]
        if proc is not None and proc.poll() is None:
            proc.terminate()

    signal.signal(signal.SIGTERM, on_term)
    while not stopping["now"]:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)  # noqa: S603
        child["p"] = proc
        while proc.poll() is None:
            if lc_pid and not _alive(lc_pid):
                stopping["now"] = True
                proc.terminate()
            time.sleep(0.2)  # clock-ok: a real process supervisor
            if stopping["now"]:
                try:
                    proc.wait(stop_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        code = proc.returncode
        print(f"supervise: {argv[0]} exited with {code}", flush=True)
        if stopping["now"] or restart not in ("on-failure", "always") or \
                (restart == "on-failure" and code == 0):
            break
        time.sleep(restart_s)  # clock-ok
    return 0


# -- vllm ------------------------------------------------------------------------------------
def _flags() -> dict[str, dict]:
    from importlib.resources import files

    return json.loads((files("spotctl.engine") / "vllm_flags.json").read_text())["flags"]


def check_vllm_args(args: list[str]) -> dict[str, str | bool]:
    """``vllm serve`` options as vLLM's own parser would take them, or exit 2 naming the first
    it would refuse. Returns option → value (True for switches)."""
    flags = _flags()
    out: dict[str, str | bool] = {}
    i = 0
    positional = []
    while i < len(args):
        a = args[i]
        if not a.startswith("-"):
            positional.append(a)
            i += 1
            continue
        name, eq, inline = a.partition("=")
        spec = flags.get(name)
        if spec is None:
            sys.exit(f"vllm serve: error: unrecognized arguments: {a}")
        if spec["value"]:
            if eq:
                value = inline
            else:
                if i + 1 >= len(args):
                    sys.exit(f"vllm serve: error: argument {name}: expected one argument")
                value = args[i + 1]
                i += 1
            if spec.get("choices") and value not in spec["choices"]:
                sys.exit(f"vllm serve: error: argument {name}: invalid choice: {value!r}")
            out[name] = value
        else:
            out[name] = True
        i += 1
    if len(positional) > 1:
        sys.exit(f"vllm serve: error: unrecognized arguments: {' '.join(positional[1:])}")
    if positional:
        out.setdefault("--model", positional[0])
    if "--model" not in out:
        sys.exit("vllm serve: error: no model given")
    return out


def vllm(args: list[str]) -> int:
    version = os.environ.get("SPOTCTL_LC_VLLM_VERSION", "0.11.0")
    if args in (["--version"], ["-v"]):
        print(version)
        return 0
    if not args or args[0] != "serve":
        sys.exit(f"vllm: only `serve` and `--version` are emulated, got {args[:1]}")
    opts = check_vllm_args(args[1:])
    hf_home = os.environ.get("HF_HOME")
    if hf_home:  # the weights "download" lands on the volume, as a real one would
        repo = "models--" + str(opts["--model"]).replace("/", "--")
        Path(hf_home, "hub", repo).mkdir(parents=True, exist_ok=True)
    model = str(opts.get("--served-model-name") or opts["--model"])
    port = str(opts.get("--port", "8000"))
    env = dict(os.environ)
    if env.get("VLLM_API_KEY"):
        env["SPOTCTL_ENGINE_API_KEY"] = env.pop("VLLM_API_KEY")
    # "--host 0.0.0.0" or "127.0.0.1" on a VM are the VM's own addresses: here, its loopback IP
    host = os.environ.get("SPOTCTL_VM_IP", "127.0.0.1")
    # vLLM's per-request log, kept by the built-in engine (one line per request, its tokens)
    extra = ["--enable-log-requests"] if opts.get("--enable-log-requests") is True else []
    os.execve(sys.executable, [sys.executable, "-m", "spotctl.engine.builtin", "--host", host,  # noqa: S606
                               "--port", port, "--model", model, *extra], env)
    return 0  # not reached


COMMANDS = {"lsblk": lsblk, "blkid": blkid, "mkfs.ext4": mkfs_ext4, "mount": mount,
            "mountpoint": mountpoint, "systemctl": systemctl, "vllm": vllm}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        sys.exit("usage: python -m spotctl.localcloud.vmshim COMMAND [ARGS]")
    if argv[0] == "supervise":
        sys.exit(supervise(argv[1]))
    fn = COMMANDS.get(argv[0])
    if fn is None:
        sys.exit(f"{argv[0]}: not emulated by the local cloud")
    sys.exit(fn(argv[1:]))


if __name__ == "__main__":
    main()
