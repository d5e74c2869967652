#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Foundation

// What the shared-memory transport checks of torchrun's MASTER_ADDR and MASTER_PORT: it
// joins ranks through a segment of this host, so a job that names another host, or a port
// that is not a number, is told so instead of waiting for ranks that never come.

/// Whether `address` names this host: a loopback address (`127.x.x.x`, `::1`),
/// `localhost`, this host's name (short or with a domain), or an address of one of its
/// network interfaces. No name is looked up in DNS.
func isThisHost(_ address: String) -> Bool {
    let address = address.trimmingCharacters(in: .whitespaces).lowercased()
    let bare = address.hasPrefix("[") && address.hasSuffix("]") ? String(address.dropFirst().dropLast()) : address
    if bare.isEmpty || bare == "localhost" || bare.hasSuffix(".localhost") || bare == "::1" || bare == "0.0.0.0" || bare == "::" {
        return true
    }
    var v4 = in_addr()
    if inet_pton(AF_INET, bare, &v4) == 1, UInt32(bigEndian: v4.s_addr) >> 24 == 127 { return true }
    var buffer = [CChar](repeating: 0, count: 256)
    if gethostname(&buffer, buffer.count - 1) == 0 {
        let host = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self).lowercased()
        let short = { (name: String) in name.split(separator: ".").first.map(String.init) ?? name }
        if !host.isEmpty, bare == host || short(bare) == short(host) && !bare.allSatisfy({ $0.isNumber || $0 == "." }) {
            return true
        }
    }
    return interfaceAddresses().contains(bare)
}

/// The numeric addresses of this host's network interfaces, IPv4 and IPv6, lower-case.
private func interfaceAddresses() -> Set<String> {
    var first: UnsafeMutablePointer<ifaddrs>?
    guard getifaddrs(&first) == 0 else { return [] }
    defer { freeifaddrs(first) }
    var addresses: Set<String> = []
    var entry = first
    while let current = entry {
        defer { entry = current.pointee.ifa_next }
        guard let socket = current.pointee.ifa_addr else { continue }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        switch Int32(socket.pointee.sa_family) {
        case AF_INET:
            socket.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { v4 in
                var address = v4.pointee.sin_addr
                _ = inet_ntop(AF_INET, &address, &text, socklen_t(text.count))
            }
        case AF_INET6:
            socket.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { v6 in
                var address = v6.pointee.sin6_addr
                _ = inet_ntop(AF_INET6, &address, &text, socklen_t(text.count))
            }
        default: continue
        }
        let string = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self).lowercased()
        if !string.isEmpty { addresses.insert(string) }
    }
    return addresses
}

extension World {
    /// Throws unless torchrun's `MASTER_ADDR` and `MASTER_PORT` in `env` suit a
    /// shared-memory world: the address, when set, is this host (see ``isThisHost(_:)``);
    /// the port, when it names the segment (no `FVD_SHM_NAME`), is a number in 1...65535.
    static func checkRendezvous(_ env: [String: String]) throws {
        if let address = env["MASTER_ADDR"], !isThisHost(address) {
            throw FVDError.invalidArgument(
                "MASTER_ADDR=\(address) is not this host: the shared-memory transport needs every rank on this host; "
                    + "for several hosts, start the ranks with mpirun and use the MPI transport (a build with --traits MPI)")
        }
        if env["FVD_SHM_NAME"] == nil, let port = env["MASTER_PORT"] {
            guard let number = Int(port), (1...65535).contains(number) else {
                throw FVDError.invalidArgument("MASTER_PORT=\(port) is not a port number in 1...65535")
            }
        }
    }
}
