from porelab.cli import main

main()
