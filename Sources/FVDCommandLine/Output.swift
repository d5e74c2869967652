import FastVideoDistributed
import Synchronization

// How the commands write to stdout and stderr: straight through write(2), so a closed or
// full stream never traps (FileHandle.write does), and a failed stdout write is noticed:
// `runFromCommandLine` then ends non-zero, as coreutils do for `echo hi > /dev/full`.

/// Writes `line` and a newline to stdout.
func printOutput(_ line: String) {
    StandardStreams.write(line + "\n", to: 1)
}

/// Writes `text` to stderr as it is (no newline added); failures are ignored. Once
/// ``processIsEnding`` is set, other threads' lines are dropped.
func writeError(_ text: String) {
    if processIsEnding.load(ordering: .acquiring) { return }
    StandardStreams.writeError(text)
}

/// Set by a thread that has taken over the end of the process (`fvd apply`'s signal
/// cleanup, which removes the staging folder, says why and exits 128 + the signal): the
/// main thread's failure that follows (its folder vanished) is then neither printed nor
/// allowed to exit first with another status.
let processIsEnding = Atomic<Bool>(false)

/// Prints a library error as one line on stderr.
func printError(_ error: any Error) {
    writeError("error: \(error)\n")
}
