from pneumo_hpc.cli import main

main()
