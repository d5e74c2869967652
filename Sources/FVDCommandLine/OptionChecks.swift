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
