import ArgumentParser

// Range checks shared by the commands' `validate()`: each names the option, so a usage
// error points at what to change (exit status 64, one `error:` line).

/// Throws a usage error unless `seconds` is a positive number of seconds or infinity
/// (`--timeout inf`: no limit). The rule is the same for every command and for
/// `FVD_TIMEOUT` and `FVD_JOIN_TIMEOUT`: zero would fail every collective at once.
func checkTimeout(_ seconds: Double?, option: String = "--timeout") throws {
    guard let seconds else { return }
    guard seconds > 0 else {
        throw ValidationError("\(option) must be a positive number of seconds (or inf for no limit), got \(formatSeconds(seconds))")
    }
}

/// The world sizes the commands accept: the in-process and shared-memory transports run
/// at most 1024 ranks (`fvd launch -n` too); `mpirun` decides for the MPI transport.
let commandWorldSizes = 1...1024

/// Throws a usage error naming `option` unless `size` is a world size `transport` can
/// run, checked before a shared-memory command starts its launcher (whose `-n` the user
/// never typed).
func checkWorldSize(_ size: Int, transport: String, option: String = "--world-size") throws {
    guard size >= commandWorldSizes.lowerBound else {
        throw ValidationError("\(option) \(size): world size must be at least 1")
    }
    guard transport == "mpi" || size <= commandWorldSizes.upperBound else {
        throw ValidationError("\(option) \(size): world size must be at most \(commandWorldSizes.upperBound) with --transport \(transport)")
    }
}

/// Throws a usage error when `arguments` ask for help on a command that does not exist
/// (`fvd help bogus`), which ArgumentParser would answer with the general help and
/// status 0, as if it had been found. (git, cargo and swift do the same: non-zero.)
func checkHelpTopic(_ arguments: [String]) throws {
    guard arguments.first == "help" else { return }
    var command: any ParsableCommand.Type = FVDCommand.self
    var path = ["fvd"]
    for word in arguments.dropFirst() where !word.hasPrefix("-") {
        let subcommands = command.configuration.subcommands
        guard let next = subcommands.first(where: { $0._commandName == word }) else {
            let names = subcommands.filter { $0.configuration.shouldDisplay }.map { $0._commandName }
            throw ValidationError(
                "no help for '\(word)': \(path.joined(separator: " ")) has "
                    + (names.isEmpty ? "no subcommands" : "the commands \(names.joined(separator: ", "))"))
        }
        command = next
        path.append(word)
    }
}
