from ratewire.cli import main

main()
