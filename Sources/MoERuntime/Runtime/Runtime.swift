// The runtime: a topology, its pinned workers, the kernel path of the matrix
// products (Dispatch.swift), and OpenBLAS kept at one thread so that, when it is
// the path, each worker's sgemm runs on that worker alone.

import MoESupport
#if canImport(Glibc)
import Glibc
#endif

public final class Runtime: @unchecked Sendable {
  public let topology: Topology
  public let pool: WorkerPool
  public let defaultPlacement: PlacementPolicy

  public init(threads: Int = 0, source: TopologySource = .system, pin: Bool = true,
              placement: PlacementPolicy = .rowSlice) throws {
    guard threads >= 0, threads <= 4096 else {
      throw MoEError.invalid("threads is \(threads); use 0 (one per core) or 1...4096")
    }
    if case .failure(let e) = Kernels.selection { throw e }
    if case .failure(let e) = Kernels.bf16Selection { throw e }
    if case .failure(let e) = Kernels.rowStreamingSelection { throw e }
    topology = try Topology(source: source)
    pool = try WorkerPool(topology: topology, threads: threads, pin: pin)
    defaultPlacement = placement
    Runtime.keepBLASSingleThreaded()
  }

  public var workerCount: Int { pool.count }

  /// Multiply-add throughput of all workers at once on the active kernel path's
  /// instruction set, in GFLOP/s (f32), measured over about `seconds`.
  public func measureFMAPeak(seconds: Double) -> Double {
    let rates = UnsafeMutablePointer<Double>.allocate(capacity: workerCount)
    defer { rates.deallocate() }
    rates.initialize(repeating: 0, count: workerCount)
    pool.run { w in rates[w] = Kernels.measureFMAPeak(seconds: seconds) }
    return (0..<workerCount).reduce(0) { $0 + rates[$1] }
  }

  /// vdpbf16ps throughput of all workers at once in GFLOP/s (two operations
  /// per bf16 multiply-add), measured over about `seconds`; nil where the CPU
  /// does not run AVX512-BF16.
  public func measureBF16Peak(seconds: Double) -> Double? {
    guard Kernels.cpuRunsBF16 else { return nil }
    let rates = UnsafeMutablePointer<Double>.allocate(capacity: workerCount)
    defer { rates.deallocate() }
    rates.initialize(repeating: 0, count: workerCount)
    pool.run { w in rates[w] = Kernels.measureBF16Peak(seconds: seconds) ?? 0 }
    return (0..<workerCount).reduce(0) { $0 + rates[$1] }
  }

  /// The nodes that have workers, with their workers, in node order.
  public var nodeWorkers: [NodeWorkers] {
    topology.nodes.indices.compactMap { n in
      let w = pool.workers(onNode: n)
      return w.isEmpty ? nil : NodeWorkers(node: n, workers: w)
    }
  }

  /// True when every worker really is pinned to its core.
  public var workersPinned: Bool { !pool.pinned.isEmpty && pool.pinned.allSatisfy { $0 } }

  /// Workers call sgemm concurrently on their own tiles, so OpenBLAS must not
  /// start threads of its own (that oversubscribes the cores). The setting is
  /// process-wide; it is re-checked before every layer call because a host may
  /// have changed it.
  package static func keepBLASSingleThreaded() {
    if BLAS.threads != 1 { BLAS.setThreads(1) }
  }

  /// Runs body(range) over a fixed split of 0..<count into one contiguous
  /// range per worker (empty ranges skipped). Runs inline on the caller when
  /// count * costPerItem is below `inlineBelow` — the split never changes a
  /// result because items are independent.
  package func parallelFor(_ count: Int, inlineBelow: Int = 1 << 14, costPerItem: Int = 1,
                           _ body: (Range<Int>) -> Void) {
    guard count > 0 else { return }
    let W = pool.count
    if W <= 1 || count == 1 || count * costPerItem < inlineBelow {
      body(0..<count)
      return
    }
    pool.run { w in
      let lo = count * w / W, hi = count * (w + 1) / W
      if hi > lo { body(lo..<hi) }
    }
  }

  /// Zeroes `floats` floats at `p` on all workers, one contiguous part each:
  /// the first write of fresh memory is a page fault per page, which the
  /// workers take in parallel (on virtual machines each is slow).
  package func zero(_ p: UnsafeMutablePointer<Float>, floats: Int) {
    parallelFor((floats + 1023) / 1024, inlineBelow: 1 << 8) { r in
      let lo = r.lowerBound * 1024, hi = min(floats, r.upperBound * 1024)
      memset(p + lo, 0, (hi - lo) * 4)
    }
  }

  /// Topology, workers and BLAS setting as JSON (`moeupcycle topology --json`).
  public func json() -> JSON {
    let s = topology.support
    return .object([
      ("cpu_model", .string(topology.cpuModel)),
      ("source", .string(sourceName)),
      ("nodes", .array(topology.nodes.map { n in
        .object([
          ("index", .int(n.logicalIndex)),
          ("os_index", .int(n.osIndex)),
          ("memory_bytes", .unsigned(n.memoryBytes)),
          ("cores", .array(n.cores.map { .int($0.osIndex) })),
        ])
      })),
      ("cores", .int(topology.coreCount)),
      ("pus", .int(topology.puCount)),
      ("workers", .array(pool.workers.enumerated().map { i, w in
        .object([
          ("index", .int(w.index)),
          ("node", .int(w.node)),
          ("core", .int(w.coreOSIndex)),
          ("pu", .int(w.puOSIndex)),
          ("pinned", .bool(i < pool.pinned.count && pool.pinned[i])),
        ])
      })),
      ("binding", .object([
        ("is_this_system", .bool(s.isThisSystem)),
        ("thread_pinning_effective", .bool(workersPinned)),
        ("memory_binding_effective", .bool(s.canBindMemory)),
        ("support_thread_cpubind", .bool(s.threadCPUBind)),
        ("support_area_membind", .bool(s.areaMemBind)),
        ("support_alloc_membind", .bool(s.allocMemBind)),
      ])),
      ("kernels", Kernels.json()),
      ("openblas", .object([
        ("core", .string(BLAS.coreName)),
        ("avx2_kernels", .bool(BLAS.hasAVX2Kernels)),
        ("config", .string(BLAS.config)),
        ("threads", .int(BLAS.threads)),
        ("coretype_env", BLAS.coreTypeEnvironment.map { .string($0) } ?? .null),
      ])),
      ("default_placement", .string(defaultPlacement.name)),
    ])
  }

  package var sourceName: String {
    switch topology.source {
    case .system: return "system"
    case .synthetic(let s): return "synthetic:\(s)"
    case .xml(let p): return "xml:\(p)"
    }
  }
}

/// A number with two decimals, without Foundation.
package func format2(_ v: Double) -> String {
  let scaled = Int((v * 100).rounded())
  let frac = abs(scaled % 100)
  return "\(scaled / 100).\(frac < 10 ? "0" : "")\(frac)"
}
