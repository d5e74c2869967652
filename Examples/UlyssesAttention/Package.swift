// swift-tools-version: 6.1
import Foundation
import PackageDescription

// A downstream package: it depends on FastVideoDistributed by path, as a project that
// vendors it would. A path dependency's package identity is its folder's name, which
// depends on where the repository was cloned, so it is read from the path. A package
// that depends on the published repository writes instead:
//     .package(url: "https://github.com/<owner>/FastVideoDistributed", branch: "main")
// and names the product `.product(name: "FastVideoDistributed", package: "FastVideoDistributed")`.
let libraryPath = "../.."
let libraryIdentity = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent(libraryPath).standardizedFileURL.lastPathComponent

let package = Package(
    name: "UlyssesAttention",
    // `swift build --traits MPI` passes the library's MPI trait on, for `mpirun`.
    traits: [.trait(name: "MPI", description: "Build the library with its MPI transport (needs Open MPI or MPICH).")],
    dependencies: [
        .package(path: libraryPath, traits: [.defaults, .trait(name: "MPI", condition: .when(traits: ["MPI"]))])
    ],
    targets: [
        .executableTarget(
            name: "UlyssesAttention",
            dependencies: [.product(name: "FastVideoDistributed", package: libraryIdentity)]
        )
    ],
    swiftLanguageModes: [.v6]
)
