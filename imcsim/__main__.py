from imcsim.cli import main

main()
