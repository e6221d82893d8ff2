from armlab.entrypoints.cli.main import main

main()
