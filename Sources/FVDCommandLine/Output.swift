import FastVideoDistributed

// How the commands write to stdout and stderr: straight through write(2), so a closed or
// full stream never traps (FileHandle.write does), and a failed stdout write is noticed:
// `runFromCommandLine` then ends non-zero, as coreutils do for `echo hi > /dev/full`.

/// Writes `line` and a newline to stdout.
func printOutput(_ line: String) {
    StandardStreams.write(line + "\n", to: 1)
}

/// Writes `text` to stderr as it is (no newline added); failures are ignored.
func writeError(_ text: String) {
    StandardStreams.writeError(text)
}

/// Prints a library error as one line on stderr.
func printError(_ error: any Error) {
    writeError("error: \(error)\n")
}
