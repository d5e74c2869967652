import FVDCommandLine

FVDCommand.main()
