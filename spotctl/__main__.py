from spotctl.cli.main import run

run()
