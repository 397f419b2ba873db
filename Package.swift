// swift-tools-version:6.0
import PackageDescription

let root = Context.packageDirectory

// The kernels are written with SIMD types; the compiler vectorizes them for the
// build machine's CPU (like -march=native). Set MOEUPCYCLE_TARGET_CPU to a CPU
// name (e.g. haswell, znver4, sapphirerapids) to build for another machine.
let targetCPU = Context.environment["MOEUPCYCLE_TARGET_CPU"] ?? "native"

// MARK: - Products
let products: [Product] = [
  // libmoeupcycle.so: the C ABI over the Swift core. Release builds add
  // `-Xswiftc -static-stdlib` (scripts/build.sh) so the Swift runtime is linked in.
  .library(name: "moeupcycle", type: .dynamic, targets: ["MoEUpcycle"]),
]

// MARK: - System libraries (found by pkg-config)
let systemTargets: [Target] = [
  .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas",
                 providers: [.apt(["libopenblas-dev"])]),
  .systemLibrary(name: "CHwloc", pkgConfig: "hwloc",
                 providers: [.apt(["libhwloc-dev"])]),
]

// MARK: - Library targets
let libraryTargets: [Target] = [
  // The public header, exposed to Swift so `@c @implementation` checks every
  // exported function against its declaration.
  .target(name: "CMoeUpcycle", path: "Sources/CMoeUpcycle", publicHeadersPath: "include"),
  // Pure Swift core: formats, upcycling, runtime, kernels.
  .target(name: "MoECore", dependencies: ["COpenBLAS", "CHwloc"],
          swiftSettings: [.unsafeFlags(["-target-cpu", targetCPU])]),
  // The ABI layer: validation, error mapping, exported functions.
  .target(name: "MoEUpcycle", dependencies: ["CMoeUpcycle", "MoECore"],
          exclude: ["exports.map"],
          linkerSettings: [
            // Export only moe_* symbols.
            .unsafeFlags(["-use-ld=lld", "-Xlinker", "--version-script=\(root)/Sources/MoEUpcycle/exports.map"]),
          ]),
]

// MARK: - Tests
let testTargets: [Target] = [
  .testTarget(name: "MoECoreTests", dependencies: ["MoECore"]),
]

let package = Package(
  name: "moeupcycle",
  products: products,
  targets: systemTargets + libraryTargets + testTargets
)
