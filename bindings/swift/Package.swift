// swift-tools-version:5.7
// SwiftPM package for smolcap. The C library is found with pkg-config (smolcap.pc, see
// tools/stage_native.sh): `PKG_CONFIG_PATH=PREFIX/lib/pkgconfig swift build`.
// NOTE: CI has no Swift toolchain; it only compiles the module map with clang.
import PackageDescription

let package = Package(
    name: "Smolcap",
    products: [
        .library(name: "Smolcap", targets: ["Smolcap"]),
    ],
    targets: [
        .systemLibrary(
            name: "CSmolcap",
            path: "Sources/CSmolcap",
            pkgConfig: "smolcap",
            providers: []
        ),
        .target(name: "Smolcap", dependencies: ["CSmolcap"], path: "Sources/Smolcap"),
        .testTarget(name: "SmolcapTests", dependencies: ["Smolcap"], path: "Tests/SmolcapTests"),
    ]
)
