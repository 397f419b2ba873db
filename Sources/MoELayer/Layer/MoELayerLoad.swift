// Loading an MoE layer from an upcycled (HF Mixtral / Qwen2-MoE) checkpoint,
// and views of the last forward's routing.

import MoESupport
import MoEFormats
import MoERuntime

extension MoELayer {
  /// Creates the layer from MoE layer `layer` of the checkpoint at `path`.
  /// `adjust` may change behaviour fields (storage, placement, capacity, ...).
  public static func load(checkpoint path: String, layer l: Int, runtime: Runtime,
                          adjust: ((inout MoELayerConfig) throws -> Void)?) throws -> MoELayer {
    try load(checkpoint: try Checkpoint(path: path), layer: l, runtime: runtime, adjust: adjust)
  }

  /// The checkpoint's bytes of every routed expert's gate, up and down
  /// matrices, when all of them are stored one matrix per expert in the
  /// layer's storage type (f32 or bf16) and mapped (TensorSource.mapped);
  /// else nil.
  private static func mappedExperts(_ src: TensorSource, _ names: any HFLayout, layer l: Int,
                                    config: MoELayerConfig, shapes: ModelDescription)
    -> (gate: [UnsafeRawPointer], up: [UnsafeRawPointer], down: [UnsafeRawPointer])? {
    guard config.storage == .f32 || config.storage == .bf16 else { return nil }
    var found: [Projection: [UnsafeRawPointer]] = [:]
    for p in Projection.allCases {
      for e in 0..<config.experts {
        let name = names.name(.expert(p), layer: l, expert: e)
        guard let info = src.info(name), info.dtype == config.storage,
              info.shape == TensorRole.expert(p).shape(in: shapes), let bytes = src.mapped(name) else { return nil }
        found[p, default: []].append(bytes)
      }
    }
    return (found[.gate]!, found[.up]!, found[.down]!)
  }

  /// Creates the layer from MoE layer `layer` of an opened checkpoint, under
  /// the names of the HF format its tensors have (CheckpointLayouts.moe).
  /// Expert weights may be stored per expert or fused (gate rows first).
  /// `map`: plain expert matrices stored as the layer holds them are read
  /// in place from the file's mapping (see mapExperts), not copied, when
  /// the runtime has one NUMA node.
  public static func load(checkpoint ckpt: Checkpoint, layer l: Int, runtime: Runtime, map: Bool = false,
                          adjust: ((inout MoELayerConfig) throws -> Void)?) throws -> MoELayer {
    let path = ckpt.path
    let d = ckpt.description
    guard let moe = d.moe else {
      throw MoEError.invalid("'\(path)' is a dense \(d.architecture.rawValue) checkpoint; load an MoE checkpoint (upcycle it first)")
    }
    guard l >= 0, l < d.numLayers else {
      throw MoEError.invalid("layer_index is \(l); the checkpoint has \(d.numLayers) layers")
    }
    guard moe.moeLayers[l] else {
      let list = moe.moeLayers.indices.filter { moe.moeLayers[$0] }.map(String.init).joined(separator: ",")
      throw MoEError.invalid("layer \(l) of '\(path)' is dense; its MoE layers are \(list)")
    }
    let H = d.hiddenSize, E = moe.numExperts, F = moe.expertIntermediateSize
    var config = MoELayerConfig(hidden: H, ffn: F, experts: E, topK: moe.topK)
    let src = ckpt.source
    let names = CheckpointLayouts.moe(in: src, layer: l)
    // The routing is fixed by the names' format or the architecture's where one fixes it (Mixtral).
    let format = names.alwaysRenormalizes ? names : d.hf
    let sc = d.sourceConfig
    config.routing = format.routing(sc)
    let fixedRouting = format.alwaysRenormalizes
    if !fixedRouting { config.sharedFFN = moe.sharedExpertIntermediateSize }
    if let coef = sc?["router_aux_loss_coef"]?.doubleValue, coef.isFinite, coef >= 0 { config.balanceCoef = Float(coef) }
    try adjust?(&config)
    // Shapes as the layer holds them (its shared expert's size after `adjust`).
    var shapes = d
    shapes.moe?.sharedExpertIntermediateSize = config.sharedFFN
    // With several NUMA nodes, experts are copied onto the nodes the plan puts them on.
    let mapped = map && runtime.topology.nodes.count <= 1
      ? mappedExperts(src, names, layer: l, config: config, shapes: shapes) : nil
    let layer = try MoELayer(config: config, runtime: runtime, touch: mapped == nil)
    func read(_ role: TensorRole, into kind: LayerWeight, expert e: Int = -1) throws {
      let name = names.name(role, layer: l, expert: e), shape = role.shape(in: shapes)
      // Blocks of the type the layer stores are kept bit for bit.
      if let info = src.info(name), info.dtype.isQuantized, info.dtype == config.storage, info.shape == shape,
         kind != .router, kind != .sharedExpertGate, e >= 0 || kind.isShared {
        var blocks = [UInt8](repeating: 0, count: info.byteCount)
        try blocks.withUnsafeMutableBytes { try src.readStored(name, into: $0.baseAddress!) }
        try blocks.withUnsafeBytes {
          try layer.setWeightBlocks(kind, expert: e, dtype: info.dtype, blocks: $0.baseAddress!, byteCount: info.byteCount)
        }
        src.release(name)
        return
      }
      let values = try src.readFloat(name, shape: shape)
      try values.withUnsafeBufferPointer { try layer.setWeight(kind, expert: e, data: $0.baseAddress!, count: values.count) }
      src.release(name)
    }
    try read(.router, into: .router)
    let fusedGateUp = names.name(.expertsGateUp, layer: l)
    if let mapped {
      try layer.mapExperts(owner: src, gate: mapped.gate, up: mapped.up, down: mapped.down)
    } else if src.info(fusedGateUp) != nil {
      let gateUp = try src.readFloat(fusedGateUp, shape: TensorRole.expertsGateUp.shape(in: d))
      try gateUp.withUnsafeBufferPointer { g in
        for e in 0..<E {
          let base = g.baseAddress! + e * 2 * F * H
          try layer.setWeight(.gate, expert: e, data: base, count: F * H)
          try layer.setWeight(.up, expert: e, data: base + F * H, count: F * H)
        }
      }
      src.release(fusedGateUp)
      try read(.expertsDown, into: .down)
      src.release(names.name(.expertsDown, layer: l))
    } else {
      for e in 0..<E {
        for p in Projection.allCases { try read(.expert(p), into: p.layerWeight, expert: e) }
      }
    }
    if !fixedRouting && config.sharedFFN > 0 {
      for w in [LayerWeight.sharedGate, .sharedUp, .sharedDown, .sharedExpertGate] { try read(TensorRole(w), into: w) }
    }
    return layer
  }

  /// Tokens of the saved forward, if one is saved.
  public var savedTokens: Int? { saved?.tokens }

  /// The last forward's combine weights as a dense [T, E] matrix.
  public func denseRoutingWeights() -> [Float] {
    guard let r = lastRouting else { return [] }
    let E = config.experts
    var dense = [Float](repeating: 0, count: r.tokens * E)
    for row in 0..<r.rows {
      dense[Int(r.rowToken[row]) * E + Int(r.rowExpert[row])] = r.rowWeight[row]
    }
    return dense
  }
}
