// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "FastVideoDistributed",
    products: [
        .library(name: "FastVideoDistributed", targets: ["FastVideoDistributed"]),
        .executable(name: "fvd", targets: ["fvd"]),
    ],
    // `swift build --traits MPI`: the MPI transport, for ranks on many hosts (needs Open MPI
    // or MPICH: `apt-get install libopenmpi-dev openmpi-bin`). The default build needs nothing.
    traits: [
        .trait(name: "MPI", description: "The MPI transport (Open MPI or MPICH, found by pkg-config)."),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        // `swift package generate-documentation` (the DocC catalog in Sources/FastVideoDistributed).
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // Thin C shims: futex, atomics on raw memory, streaming-store copy. Nothing clever in C.
        .target(name: "CFVDShims"),
        // MPI's C API, found by pkg-config; only built with the MPI trait.
        .systemLibrary(
            name: "CMPI",
            pkgConfig: "mpi",
            providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]
        ),
        .target(
            name: "FastVideoDistributed",
            dependencies: [
                "CFVDShims",
                .target(name: "CMPI", condition: .when(traits: ["MPI"])),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        // The `fvd` commands live in a library so that tests can drive them without a process.
        .target(
            name: "FVDCommandLine",
            dependencies: [
                "CFVDShims",
                "FastVideoDistributed",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(name: "fvd", dependencies: ["FVDCommandLine"]),
        // Test support: counts each thread's heap allocations (the hot-path allocation test).
        .target(name: "CFVDAllocationCounter", path: "Tests/CFVDAllocationCounter"),
        .testTarget(
            name: "FastVideoDistributedTests",
            dependencies: [
                "FastVideoDistributed",
                "CFVDAllocationCounter",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "InMemoryLogging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ],
            exclude: ["Fixtures"]
        ),
        .testTarget(
            name: "FVDCommandLineTests",
            dependencies: ["FVDCommandLine", "FastVideoDistributed"],
            exclude: ["Fixtures"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
