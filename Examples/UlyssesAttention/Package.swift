// swift-tools-version: 6.1
import Foundation
import PackageDescription

// A downstream package: it depends on FastVideoDistributed by path, as a project that
// vendors it would. A path dependency's package identity is its folder's name, which
// depends on where the repository was cloned, so it is read from the path. A package
// that depends on the published repository writes instead:
//     .package(url: "https://github.com/<owner>/FastVideoDistributed", from: "1.0.0")
// and names the product `.product(name: "FastVideoDistributed", package: "FastVideoDistributed")`.
let libraryPath = "../.."
let libraryIdentity = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent(libraryPath).standardizedFileURL.lastPathComponent

let package = Package(
    name: "UlyssesAttention",
    dependencies: [.package(path: libraryPath)],
    targets: [
        .executableTarget(
            name: "UlyssesAttention",
            dependencies: [.product(name: "FastVideoDistributed", package: libraryIdentity)]
        )
    ],
    swiftLanguageModes: [.v6]
)
