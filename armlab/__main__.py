from armlab.cli import main

main()
