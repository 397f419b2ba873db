// Where a layer of a given configuration would run on a runtime: its
// placement plan, and the text of `moeupcycle topology` that shows it.

import MoERuntime
import MoESupport

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
