import FVDCommandLine

FVDCommand.runFromCommandLine()
