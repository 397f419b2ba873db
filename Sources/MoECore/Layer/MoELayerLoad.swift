// Loading an MoE layer from an upcycled (HF Mixtral / Qwen2-MoE) checkpoint,
// and views of the last forward's routing.

extension MoELayer {
  /// Creates the layer from MoE layer `layer` of the checkpoint at `path`.
  /// `adjust` may change behaviour fields (storage, placement, capacity, ...).
  public static func load(checkpoint path: String, layer l: Int, runtime: Runtime,
                          adjust: ((inout MoELayerConfig) throws -> Void)?) throws -> MoELayer {
    try load(checkpoint: try Checkpoint(path: path), layer: l, runtime: runtime, adjust: adjust)
  }

  /// Creates the layer from MoE layer `layer` of an opened checkpoint. Expert
  /// weights may be stored per expert (Mixtral w1/w2/w3 or Qwen2-MoE
  /// gate/up/down_proj) or fused (`experts.gate_up_proj` [E, 2F, H] with the
  /// gate rows first, `experts.down_proj` [E, H, F]).
  public static func load(checkpoint ckpt: Checkpoint, layer l: Int, runtime: Runtime,
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
    let prefix = ModelDescription.layerPrefix(l)
    let src = ckpt.source
    // Legacy Mixtral names live under block_sparse_moe; newer ones under mlp.
    let legacyMixtral = src.info(prefix + "block_sparse_moe.gate.weight") != nil
    let mixtral = legacyMixtral || d.architecture == .mixtral
    let sc = d.sourceConfig
    if mixtral {
      config.routing = .softmaxTopKRenorm
    } else {
      config.routing = (sc?["norm_topk_prob"]?.boolValue ?? false) ? .softmaxTopKRenorm : .softmaxTopK
      config.sharedFFN = moe.sharedExpertIntermediateSize
    }
    // A routing recorded by the upcycler wins (e.g. top-k then softmax).
    if let name = sc?["moeupcycle"]?["routing"]?.stringValue {
      switch name {
      case "softmax_topk_renorm": config.routing = .softmaxTopKRenorm
      case "softmax_topk": config.routing = .softmaxTopK
      case "topk_softmax": config.routing = .topKSoftmax
      default: break
      }
    }
    if let coef = sc?["router_aux_loss_coef"]?.doubleValue, coef.isFinite, coef >= 0 { config.balanceCoef = Float(coef) }
    try adjust?(&config)
    let layer = try MoELayer(config: config, runtime: runtime)

    func read(_ name: String, _ shape: [Int], into kind: LayerWeight, expert: Int) throws {
      let values = try src.readFloat(name, shape: shape)
      try values.withUnsafeBufferPointer { try layer.setWeight(kind, expert: expert, data: $0.baseAddress!, count: values.count) }
    }
    let block = prefix + (legacyMixtral ? "block_sparse_moe." : "mlp.")
    if src.info(block + "experts.gate_up_proj") != nil {
      try read(block + "gate.weight", [E, H], into: .router, expert: -1)
      let gateUp = try src.readFloat(block + "experts.gate_up_proj", shape: [E, 2 * F, H])
      try gateUp.withUnsafeBufferPointer { g in
        for e in 0..<E {
          let base = g.baseAddress! + e * 2 * F * H
          try layer.setWeight(.gate, expert: e, data: base, count: F * H)
          try layer.setWeight(.up, expert: e, data: base + F * H, count: F * H)
        }
      }
      src.release(block + "experts.gate_up_proj")
      try read(block + "experts.down_proj", [E, H, F], into: .down, expert: -1)
      src.release(block + "experts.down_proj")
    } else {
      // Legacy Mixtral names live under block_sparse_moe; newer ones, like Qwen2-MoE's, under mlp.
      let names: Architecture = legacyMixtral ? .mixtral : .qwen2Moe
      func name(_ kind: LayerWeight, _ e: Int = -1) -> String { ModelDescription.moeTensorName(names, layer: l, kind, expert: e) }
      try read(name(.router), [E, H], into: .router, expert: -1)
      for e in 0..<E {
        try read(name(.gate, e), [F, H], into: .gate, expert: e)
        try read(name(.up, e), [F, H], into: .up, expert: e)
        try read(name(.down, e), [H, F], into: .down, expert: e)
      }
    }
    if !mixtral {
      let Fs = config.sharedFFN
      if Fs > 0 {
        func name(_ kind: LayerWeight) -> String { ModelDescription.moeTensorName(.qwen2Moe, layer: l, kind, expert: -1) }
        try read(name(.sharedGate), [Fs, H], into: .sharedGate, expert: -1)
        try read(name(.sharedUp), [Fs, H], into: .sharedUp, expert: -1)
        try read(name(.sharedDown), [H, Fs], into: .sharedDown, expert: -1)
        try read(name(.sharedExpertGate), [1, H], into: .sharedExpertGate, expert: -1)
      }
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
