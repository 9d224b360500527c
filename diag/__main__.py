from diag.cli.app import run

run()
