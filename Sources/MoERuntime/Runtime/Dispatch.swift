// Which matrix-product kernels run: chosen once per process from what the CPU
// reports and the OS enables (cpuid, xgetbv), or forced by MOEUPCYCLE_KERNELS.
// Every large product of the library (GEMM.xWt, aW, atB) goes through `Kernels.gemm`.

import MoESupport
#if canImport(Glibc)
import Glibc
#endif
import CMoECPU
import MoEKernelCode
import MoEKernelsAVX2
import MoEKernelsAVX512
import MoEKernelsPortable

/// A kernel path: one of the library's instruction-set builds, or OpenBLAS's sgemm.
public enum KernelPath: String, CaseIterable, Sendable {
  case avx512, avx2, portable, openblas

  /// What the CPU must support for this path; nil when it can run anywhere.
  var requirement: (bits: UInt32, name: String)? {
    switch self {
    case .avx512: return (UInt32(MOE_CPU_AVX512F.rawValue), "AVX-512F")
    case .avx2: return (UInt32(MOE_CPU_AVX2.rawValue | MOE_CPU_FMA.rawValue), "AVX2 and FMA")
    case .portable, .openblas: return nil
    }
  }

  /// Floats per vector of this path's kernels (0 for OpenBLAS).
  public var vectorFloats: Int { table?.width ?? 0 }

  /// The library's own kernels for this path (nil for OpenBLAS).
  package var table: KernelTable? {
    switch self {
    case .avx512: return AVX512Kernels.table
    case .avx2: return AVX2Kernels.table
    case .portable: return PortableKernels.table
    case .openblas: return nil
    }
  }

  /// The kernels that run a product of `precision` on this path: its own, and
  /// for bf16 compute on the OpenBLAS path (sgemm has no bf16) the widest of
  /// the library's own that the CPU runs. nil: OpenBLAS. `bf16` forces where
  /// bf16 compute runs (nil: MOEUPCYCLE_BF16_KERNELS, else the automatic
  /// choice); AMX and vdpbf16ps run only where the CPU has them and on the
  /// AVX-512 kernels, every other case on the fallback.
  package func table(for precision: ComputePrecision, bf16: BF16Kernels? = nil) -> KernelTable? {
    guard precision == .bf16 else { return table }
    let own = self == .openblas ? Kernels.bestPath() : self
    if own == .avx512 { return AVX512Kernels.table(bf16: bf16 ?? Kernels.bf16Setting ?? Kernels.automaticBF16) }
    return own.table ?? PortableKernels.table
  }
}

/// The CPU as the kernels see it.
public struct CPUInfo: Sendable {
  public let brand: String
  package let bits: UInt32

  public static let current: CPUInfo = {
    var buf = [CChar](repeating: 0, count: 64)
    moe_cpu_brand(&buf, buf.count)
    return CPUInfo(brand: String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self),
                   bits: moe_cpu_features())
  }()

  /// Feature names, in a fixed order, of what is usable (CPU and OS).
  public var features: [String] {
    let names: [(moe_cpu_feature, String)] = [
      (MOE_CPU_SSE2, "sse2"), (MOE_CPU_AVX2, "avx2"), (MOE_CPU_FMA, "fma"), (MOE_CPU_F16C, "f16c"),
      (MOE_CPU_AVX512F, "avx512f"), (MOE_CPU_AVX512DQ, "avx512dq"), (MOE_CPU_AVX512BW, "avx512bw"),
      (MOE_CPU_AVX512VL, "avx512vl"), (MOE_CPU_AVX512BF16, "avx512_bf16"), (MOE_CPU_AMXBF16, "amx_bf16"),
      (MOE_CPU_AVX512VNNI, "avx512_vnni"),
    ]
    return names.filter { bits & UInt32($0.0.rawValue) != 0 }.map(\.1)
      + (moe_amx_native() != 0 ? ["amx_tiles_granted"] : [])
  }

  /// Whether the CPU runs `path`; otherwise what it lacks.
  public func supports(_ path: KernelPath) -> (ok: Bool, missing: String) {
    guard let need = path.requirement else { return (true, "") }
    return (bits & need.bits == need.bits, need.name)
  }
}

/// The kernel path in use, and why.
public struct KernelChoice: Sendable {
  public let path: KernelPath
  public let reason: String
  /// Whether MOEUPCYCLE_KERNELS chose it.
  public let forced: Bool
}

public enum Kernels {
  /// The environment variable that forces a path.
  public static let environmentVariable = "MOEUPCYCLE_KERNELS"

  /// The widest of the library's own paths that this CPU runs.
  public static func bestPath(_ cpu: CPUInfo = .current) -> KernelPath {
    for p in [KernelPath.avx512, .avx2] where cpu.supports(p).ok { return p }
    return .portable
  }

  /// The choice for `setting` (MOEUPCYCLE_KERNELS's value; nil or "auto": automatic).
  public static func choose(_ setting: String?, cpu: CPUInfo = .current) throws -> KernelChoice {
    let text = (setting ?? "").filter { $0 != " " }.lowercased()
    if text.isEmpty || text == "auto" {
      let best = bestPath(cpu)
      let why: String
      switch best {
      case .avx512: why = "the CPU and the OS support AVX-512F"
      case .avx2: why = "the CPU and the OS support AVX2 and FMA, not AVX-512F"
      default: why = "the CPU lacks AVX2 or FMA (or the OS does not enable them)"
      }
      return KernelChoice(path: best, reason: why, forced: false)
    }
    guard let path = KernelPath(rawValue: text) else {
      let names = (["auto"] + KernelPath.allCases.map(\.rawValue)).joined(separator: ", ")
      throw MoEError.invalid("\(environmentVariable)='\(setting ?? "")' is not a kernel path (\(names))")
    }
    let support = cpu.supports(path)
    guard support.ok else {
      throw MoEError.unsupported("\(environmentVariable)=\(path.rawValue): this CPU (or its OS) does not support \(support.missing)")
    }
    return KernelChoice(path: path, reason: "forced by \(environmentVariable)", forced: true)
  }

  /// The process's choice, made once from the environment; an invalid setting
  /// is an error that runtime creation reports.
  public static let selection = fromEnvironment(environmentVariable, { try choose($0) })

  /// `choose` applied to the environment variable `name`'s value (nil when unset).
  static func fromEnvironment<T>(_ name: String, _ choose: (String?) throws -> T) -> Result<T, MoEError> {
    let value = getenv(name).map { String(cString: $0) }
    do { return .success(try choose(value)) } catch let e as MoEError { return .failure(e) } catch {
      return .failure(MoEError.invalid("\(error)"))
    }
  }

  /// The path the products use (the automatic one when the setting is invalid;
  /// a runtime refuses to start in that case, so only direct core callers see it).
  public static let active: KernelChoice = {
    switch selection {
    case .success(let c): return c
    case .failure: return (try? choose(nil)) ?? KernelChoice(path: .portable, reason: "", forced: false)
    }
  }()

  /// The paths this CPU can run, the library's own first.
  public static func availablePaths(_ cpu: CPUInfo = .current) -> [KernelPath] {
    KernelPath.allCases.filter { cpu.supports($0).ok }
  }

  /// c[m, n] (ldc) = a * b (or += when accumulate) on `path` (default: the
  /// active one), in p.compute's precision; `bf16` forces where bf16 compute runs.
  @inline(__always)
  package static func gemm(_ p: GEMMProblem, path: KernelPath = active.path, bf16: BF16Kernels? = nil) {
    if let table = path.table(for: p.compute, bf16: bf16) {
      table.gemm(p)
    } else {
      OpenBLASGEMM.run(p)
    }
  }

  /// The environment variable that forces where bf16 compute runs.
  public static let bf16EnvironmentVariable = "MOEUPCYCLE_BF16_KERNELS"

  /// The kernels `setting` (MOEUPCYCLE_BF16_KERNELS's value; nil or "auto":
  /// automatic) asks for bf16 compute; nil when automatic.
  public static func chooseBF16(_ setting: String?, cpu: CPUInfo = .current) throws -> BF16Kernels? {
    let text = (setting ?? "").filter { $0 != " " }.lowercased()
    if text.isEmpty || text == "auto" { return nil }
    guard let kernels = BF16Kernels(rawValue: text) else {
      let names = (["auto"] + BF16Kernels.allCases.map(\.rawValue)).joined(separator: ", ")
      throw MoEError.invalid("\(bf16EnvironmentVariable)='\(setting ?? "")' is not a bf16 kernel choice (\(names))")
    }
    if kernels == .avx512bf16 && !(cpuRunsBF16 && cpu.features.contains("avx512_bf16")) {
      throw MoEError.unsupported("\(bf16EnvironmentVariable)=avx512_bf16: this CPU (or its OS) does not support AVX512-BF16")
    }
    if kernels == .amx && !(cpuRunsAMX && cpu.features.contains("amx_bf16")) {
      throw MoEError.unsupported("\(bf16EnvironmentVariable)=amx_bf16: this CPU (or its OS) does not run AMX-BF16 tiles"
                                 + (cpu.features.contains("amx_bf16") ? " (the OS refused the tile state)" : ""))
    }
    return kernels
  }

  /// The process's bf16 choice, made once from the environment; an invalid
  /// setting is an error that runtime creation reports.
  public static let bf16Selection = fromEnvironment(bf16EnvironmentVariable, { try chooseBF16($0) })

  /// The forced bf16 kernels (nil: automatic, also when the setting is invalid).
  static var bf16Setting: BF16Kernels? {
    if case .success(let k) = bf16Selection { return k }
    return nil
  }

  /// Where bf16 compute runs on `path` (default: the active one).
  public static func bf16Kernels(path: KernelPath = active.path) -> BF16Kernels {
    path.table(for: .bf16)?.bf16 ?? .fallback
  }

  /// The automatic choice for bf16 compute on the AVX-512 kernels: AMX tiles
  /// where the process has them; else vdpbf16ps where it is not slower than
  /// the f32 kernels (bf16NativeIsSlower); else the fallback.
  public static var automaticBF16: BF16Kernels {
    if cpuRunsAMX { return .amx }
    return cpuRunsBF16 && !bf16NativeIsSlower ? .avx512bf16 : .fallback
  }

  /// Why bf16 compute runs where it does, for people.
  public static func bf16Reason(path: KernelPath = active.path, cpu: CPUInfo = .current) -> String {
    let forced = bf16Setting != nil ? "forced by \(bf16EnvironmentVariable)" : nil
    if bf16Kernels(path: path) == .amx { return "tdpbf16ps on AMX tiles: " + (forced ?? "the CPU and the OS run AMX-BF16") }
    if bf16Kernels(path: path) == .avx512bf16 {
      return "vdpbf16ps: " + (forced ?? "the CPU and the OS support AVX512-BF16")
    }
    if bf16Setting == .fallback { return "rounded operands on the f32 kernels: forced by \(bf16EnvironmentVariable)" }
    if cpu.features.contains("avx512_bf16") && bf16NativeIsSlower && path.table?.width == 16 {
      return "rounded operands on the f32 kernels: this Intel CPU runs vdpbf16ps at half its f32 multiply-add rate"
        + " (\(bf16EnvironmentVariable)=avx512_bf16 forces it)"
    }
    if !cpu.features.contains("avx512_bf16") {
      return "rounded operands on the f32 kernels: the CPU (or its OS) lacks AVX512-BF16"
    }
    return "rounded operands on the f32 kernels: the \(path.rawValue) path has no AVX512-BF16 kernel"
  }

  /// Whether vdpbf16ps would be slower than the f32 kernels on rounded
  /// operands: Intel cores (Cooper Lake to Emerald Rapids) issue it at a
  /// quarter of the f32 multiply-add rate for twice the work, half the f32
  /// peak (measured on Emerald Rapids: 85 against 175 GFLOP/s per thread);
  /// AMD's Zen 4 and 5 run it at the full rate. The automatic choice takes
  /// the fallback there; MOEUPCYCLE_BF16_KERNELS=avx512_bf16 forces it. The
  /// choice depends on the CPU alone, so a machine always gives the same bits.
  public static var bf16NativeIsSlower: Bool { moe_cpu_is_intel() != 0 }

  /// Whether the CPU and the OS run AVX512-BF16 (F, BW, VL and BF16).
  public static var cpuRunsBF16: Bool { BF16Kernels.avx512bf16.runsHere }

  /// Whether the process runs AMX-BF16 tiles (CPU, OS, and the tile state granted).
  public static var cpuRunsAMX: Bool { BF16Kernels.amx.runsHere }

  /// Measured bf16 multiply-add throughput of the calling thread in GFLOP/s
  /// (two operations per bf16 multiply-add) over about `seconds`, of
  /// `kernels` (default: vdpbf16ps where bf16 compute runs on it, else
  /// tdpbf16ps where the process runs AMX tiles, else vdpbf16ps); nil where
  /// the CPU does not run them.
  public static func measureBF16Peak(seconds: Double = 0.05, kernels: BF16Kernels? = nil) -> Double? {
    let amx = (kernels ?? (bf16Kernels() != .avx512bf16 && cpuRunsAMX ? .amx : .avx512bf16)) == .amx
    guard amx ? cpuRunsAMX : cpuRunsBF16 else { return nil }
    var iterations = amx ? 1 << 10 : 1 << 14
    var sink: Float = 0
    while true {
      let t0 = monotonicSeconds()
      var s: Float = 0
      let flops = amx ? moe_amx_dot_loop(iterations, 1e-7, &s) : moe_bf16_dot_loop(iterations, 1e-7, &s)
      let dt = monotonicSeconds() - t0
      sink += s
      if dt >= seconds || iterations >= 1 << 30 {
        blackHole(sink)
        return flops / max(dt, 1e-9) / 1e9
      }
      iterations *= dt > 0 ? max(2, min(16, Int(seconds / dt) + 1)) : 16
    }
  }

  /// Measured multiply-add throughput of the calling thread on `path`'s
  /// instruction set, in GFLOP/s (f32), over about `seconds`.
  public static func measureFMAPeak(path: KernelPath = active.path, seconds: Double = 0.05) -> Double {
    let table = path.table ?? bestPath().table ?? PortableKernels.table
    var iterations = 1 << 14
    var sink: Float = 0
    while true {
      let t0 = monotonicSeconds()
      let r = table.fmaLoop(iterations)
      let dt = monotonicSeconds() - t0
      sink += r.sink
      if dt >= seconds || iterations >= 1 << 30 {
        blackHole(sink)
        return r.flops / max(dt, 1e-9) / 1e9
      }
      iterations *= dt > 0 ? max(2, min(16, Int(seconds / dt) + 1)) : 16
    }
  }
}

/// How the decode products (1 to 16 tokens a call, bound by how fast the
/// weights stream from memory) walk a matrix's rows. Which is faster depends
/// on the CPU's hardware prefetchers, so it is chosen per CPU
/// (MOEUPCYCLE_DECODE_ROWS forces one). The two add a row's products in
/// different orders; the choice depends on the CPU alone, so a machine always
/// gives the same bits.
public enum RowStreaming: String, CaseIterable, Sendable {
  /// One row after another, each front to back: one sequential stream, which
  /// AMD Zen 4's prefetchers follow at the memory's bandwidth (one core:
  /// 24-26 GB/s, against 12 GB/s for four rows side by side).
  case sequential
  /// A token's product reads four rows side by side, and the products ask for
  /// the rows two ahead with prefetch hints: Intel Emerald Rapids decodes
  /// 15-30% faster this way than sequentially.
  case hinted
}

extension Kernels {
  /// The environment variable that forces how decode products walk the rows.
  public static let rowStreamingEnvironmentVariable = "MOEUPCYCLE_DECODE_ROWS"

  /// The walk `setting` (MOEUPCYCLE_DECODE_ROWS's value; nil or "auto":
  /// automatic) asks for; nil when automatic.
  public static func chooseRowStreaming(_ setting: String?) throws -> RowStreaming? {
    let text = (setting ?? "").filter { $0 != " " }.lowercased()
    if text.isEmpty || text == "auto" { return nil }
    guard let walk = RowStreaming(rawValue: text) else {
      let names = (["auto"] + RowStreaming.allCases.map(\.rawValue)).joined(separator: ", ")
      throw MoEError.invalid("\(rowStreamingEnvironmentVariable)='\(setting ?? "")' is not a row walk (\(names))")
    }
    return walk
  }

  /// The process's choice, made once from the environment; an invalid setting
  /// is an error that runtime creation reports.
  public static let rowStreamingSelection = fromEnvironment(rowStreamingEnvironmentVariable, {
    try chooseRowStreaming($0)
  })

  /// The automatic walk: hinted on Intel CPUs, sequential on the others.
  public static var automaticRowStreaming: RowStreaming { moe_cpu_is_intel() != 0 ? .hinted : .sequential }

  /// The walk the decode products take (the automatic one when the setting is invalid).
  public static let rowStreaming: RowStreaming = {
    if case .success(let forced?) = rowStreamingSelection { return forced }
    return automaticRowStreaming
  }()

  /// Why the decode products walk the rows as they do, for people.
  public static func rowStreamingReason() -> String {
    if case .success(_?) = rowStreamingSelection { return "forced by \(rowStreamingEnvironmentVariable)" }
    return rowStreaming == .hinted
      ? "Intel CPU: four rows side by side, rows ahead asked for by prefetch hints"
      : "one row after another, a sequential stream for the hardware prefetchers"
  }
}

extension Kernels {
  /// One line for people: the path, why, and the CPU.
  public static var summary: String {
    let cpu = CPUInfo.current
    return "\(active.path.rawValue) (\(active.reason)); bf16 compute \(bf16Kernels().rawValue) (\(bf16Reason()))"
      + "; quantized weights \(quantized.rawValue) (\(quantReason()))"
      + "; decode rows \(rowStreaming.rawValue) (\(rowStreamingReason()))"
      + "; CPU \(cpu.brand.isEmpty ? "unknown" : cpu.brand) [\(cpu.features.joined(separator: " "))]"
  }

  /// The choice, the CPU's usable features and the paths it can run, as JSON.
  public static func json() -> JSON {
    let cpu = CPUInfo.current
    var fields: [(String, JSON)] = [
      ("path", .string(active.path.rawValue)),
      ("reason", .string(active.reason)),
      ("forced", .bool(active.forced)),
      ("cpu_brand", .string(cpu.brand)),
      ("cpu_features", .array(cpu.features.map { .string($0) })),
      ("available", .array(availablePaths(cpu).map { .string($0.rawValue) })),
      ("bf16_compute", .string(bf16Kernels().rawValue)),
      ("bf16_compute_reason", .string(bf16Reason())),
      ("quantized", .string(quantized.rawValue)),
      ("quantized_reason", .string(quantReason())),
      ("decode_rows", .string(rowStreaming.rawValue)),
      ("decode_rows_reason", .string(rowStreamingReason())),
    ]
    if let table = active.path.table {
      fields.append(("vector_floats", .int(table.width)))
      fields.append(("fused_multiply_add", .bool(table.fused)))
    }
    return .object(fields)
  }
}

@inline(never)
func blackHole(_ x: Float) { _ = x }

/// Where quantized products run.
public enum QuantKernels: String, Sendable, CaseIterable {
  /// vpdpbusd on 512-bit vectors.
  case avx512vnni = "avx512_vnni"
  /// vpmaddubsw on 256-bit vectors.
  case avx2
  /// Plain C: the reference the others are tested against.
  case portable

  package var isa: Int32 {
    switch self {
    case .avx512vnni: return Int32(MOE_Q_ISA_AVX512_VNNI)
    case .avx2: return Int32(MOE_Q_ISA_AVX2)
    case .portable: return Int32(MOE_Q_ISA_PORTABLE)
    }
  }

  /// Whether the CPU and the OS run these kernels.
  public var runsHere: Bool {
    switch self {
    case .avx512vnni: return moe_q_vnni_native() != 0
    case .avx2: return moe_q_avx2_native() != 0
    case .portable: return true
    }
  }
}

extension Kernels {
  /// Where quantized products run on `path`: the widest integer dot product
  /// the CPU has within that path's instruction set (the AVX-512 and OpenBLAS
  /// paths take AVX512-VNNI where the CPU has it, else AVX2).
  public static func quantKernels(path: KernelPath = active.path) -> QuantKernels {
    let candidates: [QuantKernels]
    switch path {
    case .avx512, .openblas: candidates = [.avx512vnni, .avx2]
    case .avx2: candidates = [.avx2]
    case .portable: candidates = []
    }
    return candidates.first { $0.runsHere } ?? .portable
  }

  /// Where quantized products run in this process (on the active path).
  public static let quantized: QuantKernels = quantKernels()

  /// Why quantized products run where they do, for people.
  public static func quantReason(path: KernelPath = active.path) -> String {
    switch quantKernels(path: path) {
    case .avx512vnni: return "vpdpbusd: the CPU and the OS support AVX512-VNNI"
    case .avx2:
      return path == .avx2 ? "vpmaddubsw: the avx2 path" : "vpmaddubsw: the CPU (or its OS) lacks AVX512-VNNI"
    case .portable: return path == .portable ? "plain C: the portable path" : "plain C: the CPU lacks AVX2, FMA or F16C"
    }
  }
}
