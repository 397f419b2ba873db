// The runtime: a topology, its pinned workers, the kernel path of the matrix
// products (Kernels.swift), and OpenBLAS kept at one thread so that, when it is
// the path, each worker's sgemm runs on that worker alone.

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
  static func keepBLASSingleThreaded() {
    if BLAS.threads != 1 { BLAS.setThreads(1) }
  }

  /// Runs body(range) over a fixed split of 0..<count into one contiguous
  /// range per worker (empty ranges skipped). Runs inline on the caller when
  /// count * costPerItem is below `inlineBelow` — the split never changes a
  /// result because items are independent.
  func parallelFor(_ count: Int, inlineBelow: Int = 1 << 14, costPerItem: Int = 1,
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

  var sourceName: String {
    switch topology.source {
    case .system: return "system"
    case .synthetic(let s): return "synthetic:\(s)"
    case .xml(let p): return "xml:\(p)"
    }
  }
}

extension Runtime {
  /// The placement plan a layer of this configuration would get here.
  public func plan(for config: MoELayerConfig) throws -> PlacementPlan {
    var ffnSizes = [Int](repeating: config.ffn, count: config.experts)
    var loads = [Double](repeating: Double(config.topK) / Double(config.experts), count: config.experts)
    if config.sharedFFN > 0 { ffnSizes.append(config.sharedFFN); loads.append(1) }
    return try PlacementPlan.make(policy: config.placement ?? defaultPlacement,
                                  ffnSizes: ffnSizes, expectedLoad: loads, nodes: nodeWorkers,
                                  alignment: max(PlacementPlan.alignment, config.storage.blockElements))
  }

  /// Text for `moeupcycle topology`: JSON, or lines for a person.
  public func describe(layer: MoELayerConfig?, json asJSON: Bool) throws -> String {
    let plan = try layer.map { try self.plan(for: $0) }
    if asJSON {
      var j = json()
      if let layer, let plan {
        j.set("layer", .object([
          ("hidden_size", .int(layer.hidden)), ("moe_intermediate_size", .int(layer.ffn)),
          ("num_experts", .int(layer.experts)), ("top_k", .int(layer.topK)),
          ("shared_expert_intermediate_size", .int(layer.sharedFFN)),
          ("compute", .string(layer.compute == .bf16 ? "bf16" : "f32")),
        ]))
        j.set("placement", plan.json())
      }
      return j.serialized(indent: 2) + "\n"
    }
    var lines: [String] = []
    let s = topology.support
    let where_ = s.isThisSystem ? "this machine" : "not this machine: \(sourceName)"
    lines.append("topology: \(where_)\(topology.cpuModel.isEmpty ? "" : ", \(topology.cpuModel)")")
    lines.append("NUMA nodes: \(topology.nodes.count), cores: \(topology.coreCount), PUs: \(topology.puCount)")
    for n in topology.nodes {
      let gib = Double(n.memoryBytes) / Double(1 << 30)
      let cores = n.cores.map { String($0.osIndex) }.joined(separator: ",")
      lines.append("  node \(n.logicalIndex) (os \(n.osIndex)): \(n.cores.count) cores [\(cores)], \(format2(gib)) GiB")
    }
    lines.append("workers: \(pool.count)")
    for (i, w) in pool.workers.enumerated() {
      let pinned = i < pool.pinned.count && pool.pinned[i]
      lines.append("  worker \(w.index): node \(w.node), core \(w.coreOSIndex), PU \(w.puOSIndex), \(pinned ? "pinned" : "not pinned")")
    }
    lines.append("thread pinning effective: \(workersPinned ? "yes" : "no")")
    lines.append("memory binding effective: \(s.canBindMemory ? "yes" : "no")"
      + " (hwloc: this system \(s.isThisSystem ? "yes" : "no"), area membind \(s.areaMemBind ? "yes" : "no"), alloc membind \(s.allocMemBind ? "yes" : "no"))")
    let env = BLAS.coreTypeEnvironment.map { "OPENBLAS_CORETYPE=\($0)" } ?? "OPENBLAS_CORETYPE unset"
    lines.append("kernels: \(Kernels.summary)")
    lines.append("OpenBLAS: kernels \(BLAS.coreName) (\(env)\(BLAS.hasAVX2Kernels ? "" : "; no AVX2 kernels for this CPU")), threads \(BLAS.threads), \(BLAS.config)")
    if let layer, let plan {
      lines.append("placement \(plan.policy.name) for H=\(layer.hidden) F=\(layer.ffn) E=\(layer.experts) K=\(layer.topK)"
        + (layer.sharedFFN > 0 ? " shared F=\(layer.sharedFFN)" : "") + ":")
      for shard in plan.shards {
        let node = shard.node.map { "node \($0)" } ?? "all nodes"
        let workers = shard.workers.map(String.init).joined(separator: ",")
        let slices = shard.slices.map { sl in
          let name = sl.expert < layer.experts ? "e\(sl.expert)" : "shared"
          return "\(name)[\(sl.ffn.lowerBound)..<\(sl.ffn.upperBound)]"
        }.joined(separator: " ")
        lines.append("  \(node), workers [\(workers)]: \(slices)")
      }
    }
    return lines.joined(separator: "\n") + "\n"
  }
}

/// A number with two decimals, without Foundation.
func format2(_ v: Double) -> String {
  let scaled = Int((v * 100).rounded())
  let frac = abs(scaled % 100)
  return "\(scaled / 100).\(frac < 10 ? "0" : "")\(frac)"
}
