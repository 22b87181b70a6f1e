from caffesolve.cli import main

main()
