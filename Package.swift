// swift-tools-version:6.0
import PackageDescription

let root = Context.packageDirectory

// The core is compiled for a baseline CPU: x86-64-v3 (AVX2, FMA, F16C: every
// x86-64 server CPU since 2013-2015), so one libmoeupcycle.so runs on any of them;
// the exported functions refuse, with a message, to run on a CPU below it.
// MOEUPCYCLE_TARGET_CPU (a CPU name: native, znver4, sapphirerapids, ...) builds
// the core for one machine instead; such a library runs only where it was built.
let coreCPU = Context.environment["MOEUPCYCLE_TARGET_CPU"] ?? "haswell"

// The matrix-product kernels are compiled once per instruction set, and the
// library picks one at run time from what the CPU and the OS support
// (MOEUPCYCLE_KERNELS forces one): AVX-512, AVX2 + FMA, and a portable path.
let kernelTargets: [(name: String, cpu: String?)] = [
  ("MoEKernelsAVX512", "skylake-avx512"),
  ("MoEKernelsAVX2", "haswell"),
  ("MoEKernelsPortable", nil),
]

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

// The core, in layers: each a module that imports only the layers below it
// (and the C modules it names), so the compiler checks which way the
// dependencies run. Every layer is compiled for coreCPU.
let coreModules = ["MoESupport", "MoEFormats", "MoERuntime", "MoELayer", "MoEModel", "MoEUpcycling", "MoEScaling"]

func coreLayer(_ name: String, _ dependencies: [Target.Dependency]) -> Target {
  .target(name: name, dependencies: dependencies,
          swiftSettings: [.unsafeFlags(["-target-cpu", coreCPU]), .enableUpcomingFeature("MemberImportVisibility")])
}

// MARK: - Library targets
let libraryTargets: [Target] = [
  // The public header, exposed to Swift so `@c @implementation` checks every
  // exported function against its declaration.
  .target(name: "CMoeUpcycle", path: "Sources/CMoeUpcycle", publicHeadersPath: "include"),
  // CPU features (cpuid, xgetbv) and per-thread packing buffers.
  .target(name: "CMoECPU", path: "Sources/CMoECPU", publicHeadersPath: "include"),
  // The kernels' shared source (@inlinable, instantiated by each ISA module).
  .target(name: "MoEKernelCode", dependencies: ["CMoECPU"]),
] + kernelTargets.map { k in
  .target(name: k.name, dependencies: ["MoEKernelCode"],
          swiftSettings: k.cpu.map { [.unsafeFlags(["-target-cpu", $0])] } ?? [])
} + [
  // Errors, files, JSON, buffers, random streams, element types, vector helpers.
  coreLayer("MoESupport", []),
  // Checkpoint formats (safetensors, GGUF, HF configs, one layout per format) and the tokenizer.
  coreLayer("MoEFormats", ["MoESupport"]),
  // The machine's topology, pinned workers, which kernels run (the
  // instruction-set modules, OpenBLAS) and the peaks they reach.
  coreLayer("MoERuntime", ["COpenBLAS", "CHwloc", "CMoECPU", "MoEKernelCode", "MoESupport"]
            + kernelTargets.map { .target(name: $0.name) }),
  // The library's products (GEMM, quantized, routing) and the MoE layer.
  coreLayer("MoELayer", ["CMoECPU", "MoEKernelCode", "MoESupport", "MoEFormats", "MoERuntime"]),
  // The decoder (one block for inference and training) and training.
  coreLayer("MoEModel", ["CMoECPU", "MoEKernelCode", "MoESupport", "MoEFormats", "MoERuntime", "MoELayer"]),
  // Upcycling (methods, router initializers, calibration) and new models' initialization.
  coreLayer("MoEUpcycling", ["MoESupport", "MoEFormats", "MoERuntime", "MoELayer", "MoEModel"]),
  // Scaling studies: runs of dense and upcycled models, fits of their laws.
  coreLayer("MoEScaling", ["MoESupport", "MoEFormats", "MoERuntime", "MoELayer", "MoEModel", "MoEUpcycling"]),
  // The ABI layer: validation, error mapping, exported functions. Compiled for
  // the baseline x86-64 so that it can check the CPU before the core runs.
  .target(name: "MoEUpcycle", dependencies: ["CMoeUpcycle", "CMoECPU", "MoEKernelCode"] + coreModules.map { .target(name: $0) },
          exclude: ["exports.map"],
          swiftSettings: [.enableUpcomingFeature("MemberImportVisibility")]
            + (coreCPU == "haswell" ? [.define("CORE_NEEDS_X86_64_V3")] : []),
          linkerSettings: [
            // Export only moe_* symbols.
            .unsafeFlags(["-use-ld=lld", "-Xlinker", "--version-script=\(root)/Sources/MoEUpcycle/exports.map"]),
          ]),
]

// MARK: - Tests
let testTargets: [Target] = [
  .testTarget(name: "MoECoreTests", dependencies: coreModules.map { .target(name: $0) }),
]

let package = Package(
  name: "moeupcycle",
  products: products,
  targets: systemTargets + libraryTargets + testTargets
)
