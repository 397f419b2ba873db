// Checkpoint layouts: what each checkpoint format calls a decoder's tensors
// and how its config (HF config.json, GGUF metadata) maps to and from a
// ModelDescription. One type per format, each in its own file:
//
//   HFDenseLayout       Llama, Mistral, Qwen2 (and every HF model's attention, norms, dense FFN)
//   HFMixtralLayout     Mixtral: block_sparse_moe
//   HFQwen2MoeLayout    Qwen2-MoE: mlp.experts, shared expert (also transformers 5's fused experts)
//   GGUFLlamaLayout     GGUF `llama`: Llama, Mistral, Mixtral (expert stacks)
//   GGUFQwen2Layout     GGUF `qwen2`
//   GGUFQwen2MoeLayout  GGUF `qwen2moe`: expert stacks and shared experts
//
// The readers, the upcycler, the layer loader, the model loader and writer
// and the trainer name tensors by `TensorRole` and ask a layout;
// `CheckpointLayouts` is the one list they pick from.

import MoESupport

/// What a tensor is in the decoder, whatever a format calls it.
public enum TensorRole: Hashable, Sendable, CaseIterable {
  // Model-wide.
  case embedding, finalNorm, lmHead
  // Per layer: norms and attention (q/k/v may also have a bias).
  case inputNorm, postNorm
  case query, key, value, attentionOutput
  // A dense layer's FFN.
  case ffnGate, ffnUp, ffnDown
  // An MoE layer: the router, each expert's projections, the shared expert and its gate.
  case router
  case expertGate, expertUp, expertDown
  case sharedGate, sharedUp, sharedDown, sharedExpertGate
  /// Fused expert stacks (transformers 5): every expert's gate rows then up
  /// rows [E, 2F, H], and every expert's down [E, H, F]; names without a suffix.
  case expertsGateUp, expertsDown

  /// Whether the tensor is a projection matrix (attention, FFN, experts), not an embedding, norm or gate.
  package var isProjection: Bool {
    switch self {
    case .embedding, .finalNorm, .lmHead, .inputNorm, .postNorm, .router, .sharedExpertGate: return false
    default: return true
    }
  }

  /// Whether the tensor belongs to the model rather than to a layer.
  public var isModelWide: Bool { self == .embedding || self == .finalNorm || self == .lmHead }

  /// Whether the checkpoint name has no `.weight` / `.bias` suffix.
  var isFusedStack: Bool { self == .expertsGateUp || self == .expertsDown }

  /// The role of an MoE layer's weight.
  public init(_ w: LayerWeight) {
    switch w {
    case .router: self = .router
    case .gate: self = .expertGate
    case .up: self = .expertUp
    case .down: self = .expertDown
    case .sharedGate: self = .sharedGate
    case .sharedUp: self = .sharedUp
    case .sharedDown: self = .sharedDown
    case .sharedExpertGate: self = .sharedExpertGate
    }
  }

  /// A routed expert's projection.
  package static func expert(_ p: Projection) -> TensorRole {
    switch p { case .gate: return .expertGate; case .up: return .expertUp; case .down: return .expertDown }
  }

  /// The shared expert's projection.
  package static func shared(_ p: Projection) -> TensorRole {
    switch p { case .gate: return .sharedGate; case .up: return .sharedUp; case .down: return .sharedDown }
  }

  /// The projection of a dense FFN's, a routed expert's or the shared expert's tensor.
  package var projection: Projection? {
    switch self {
    case .ffnGate, .expertGate, .sharedGate: return .gate
    case .ffnUp, .expertUp, .sharedUp: return .up
    case .ffnDown, .expertDown, .sharedDown: return .down
    default: return nil
    }
  }

  /// A dense FFN's projection.
  package static func dense(_ p: Projection) -> TensorRole {
    switch p { case .gate: return .ffnGate; case .up: return .ffnUp; case .down: return .ffnDown }
  }

  /// The tensor's shape in a model described by `d` (HF order: rows first);
  /// `bias` for the q/k/v biases.
  public func shape(in d: ModelDescription, bias: Bool = false) -> [Int] {
    let H = d.hiddenSize, q = d.numHeads * d.headDim, kv = d.numKVHeads * d.headDim, I = d.intermediateSize
    let E = d.moe?.numExperts ?? 0, F = d.moe?.expertIntermediateSize ?? 0, Fs = d.moe?.sharedExpertIntermediateSize ?? 0
    switch self {
    case .embedding, .lmHead: return d.embedShape
    case .finalNorm, .inputNorm, .postNorm: return [H]
    case .query: return bias ? [q] : [q, H]
    case .key, .value: return bias ? [kv] : [kv, H]
    case .attentionOutput: return [H, q]
    case .ffnGate, .ffnUp: return [I, H]
    case .ffnDown: return [H, I]
    case .router: return [E, H]
    case .expertGate, .expertUp: return [F, H]
    case .expertDown: return [H, F]
    case .sharedGate, .sharedUp: return [Fs, H]
    case .sharedDown: return [H, Fs]
    case .sharedExpertGate: return [1, H]
    case .expertsGateUp: return [E, 2 * F, H]
    case .expertsDown: return [E, H, F]
    }
  }
}

extension LayerWeight {
  /// The MoE layer's weight a tensor role holds; nil for the roles outside an MoE layer and the fused stacks.
  package init?(_ role: TensorRole) {
    guard let w = LayerWeight.allCases.first(where: { TensorRole($0) == role }) else { return nil }
    self = w
  }
}

// MARK: - HF formats

/// An HF safetensors format: its tensor names and its config.json, both ways.
/// Names are `model.layers.N.` + path + `.weight` (or `.bias`) for a layer's
/// tensors, path + `.weight` for the model's.
package protocol HFLayout: Sendable {
  /// The architectures (config.json's model_type) stored in this format.
  var architectures: [Architecture] { get }

  /// The path of a tensor the format names differently from a dense model
  /// (its MoE tensors); nil for the rest, which `HFDenseLayout` names.
  func ownPath(_ role: TensorRole, expert: Int) -> String?

  /// Whether an MoE layer's tensors are found under this format's names in
  /// `source` (its router is there).
  func holdsMoE(_ source: TensorSource, layer: Int) -> Bool

  /// One expert's projections in file order.
  var expertOrder: [Projection] { get }
  /// Whether the format always renormalizes the top-k routing weights (and so records no routing choice).
  var alwaysRenormalizes: Bool { get }
  /// Whether an MoE layer of the format may have a shared expert.
  var hasSharedExpert: Bool { get }
  /// Whether every layer of an MoE model in the format is an MoE layer (its config cannot list dense ones).
  var everyLayerMoE: Bool { get }
  /// Whether the format's config.json has no head_dim, so that readers take hidden_size / num_attention_heads.
  var headDimFromHidden: Bool { get }
  /// Whether an MoE model of the format with config.json `c` renormalizes the top-k routing weights.
  func renormalizes(_ c: JSON?) -> Bool
  /// Whether the format's attention has q/k/v biases (architecture `a`).
  func qkvBias(_ a: Architecture) -> Bool

  // config.json

  /// Refuses a config.json of architecture `a` whose settings the format's readers cannot honour.
  func check(_ c: ConfigFields, architecture a: Architecture) throws
  /// Reads the architecture's own fields of `c`: the MoE settings (nil for a
  /// dense model), and the dense FFN size where the format defines it otherwise.
  func describe(_ c: ConfigFields, architecture: Architecture, layers: Int, intermediate: inout Int) throws -> MoEDescription?
  /// config.json's `intermediate_size`.
  func configIntermediateSize(_ d: ModelDescription) -> Int
  /// The architecture's own fields, written after the common ones (values
  /// nil are written only when a source config carries them).
  func configFields(_ d: ModelDescription, routing: HFConfig.Routing?) -> [(String, JSON?)]
  /// The routing of a model in this format that has no config.json (read from GGUF); nil for dense.
  var defaultRouting: HFConfig.Routing? { get }
}

extension HFLayout {
  package func ownPath(_ role: TensorRole, expert: Int) -> String? { nil }
  package func holdsMoE(_ source: TensorSource, layer: Int) -> Bool {
    ownPath(.router, expert: -1) != nil && source.info(name(.router, layer: layer)) != nil
  }
  package var expertOrder: [Projection] { [.gate, .up, .down] }
  package var alwaysRenormalizes: Bool { false }
  package var hasSharedExpert: Bool { false }
  package var everyLayerMoE: Bool { false }
  package var headDimFromHidden: Bool { false }
  package func renormalizes(_ c: JSON?) -> Bool { alwaysRenormalizes }
  package func qkvBias(_ a: Architecture) -> Bool { false }
  package func check(_ c: ConfigFields, architecture a: Architecture) throws {}
  package func describe(_ c: ConfigFields, architecture: Architecture, layers: Int, intermediate: inout Int) throws -> MoEDescription? { nil }
  package func configIntermediateSize(_ d: ModelDescription) -> Int { d.intermediateSize }
  package var defaultRouting: HFConfig.Routing? { nil }

  /// A tensor's path inside its layer (or the model), without the suffix; nil
  /// for a tensor the format does not have.
  package func path(_ role: TensorRole, expert: Int = -1) -> String? {
    ownPath(role, expert: expert) ?? HFDenseLayout.decoderPath(role)
  }

  /// The checkpoint name of a tensor (`layer` ignored for model-wide ones;
  /// `expert` for routed experts; suffix "bias" for the q/k/v biases).
  package func name(_ role: TensorRole, layer: Int = 0, expert: Int = -1, _ suffix: String = "weight") -> String {
    let prefix = role.isModelWide ? "" : HFDenseLayout.layerPrefix(layer)
    guard let p = path(role, expert: expert) else { return prefix + "(no \(role) in this format)" }
    return role.isFusedStack ? prefix + p : prefix + p + "." + suffix
  }

  /// The routing of an MoE checkpoint of this format with config.json `c`:
  /// the one the upcycler recorded (e.g. top-k then softmax), else the format's.
  package func routing(_ c: JSON?) -> RoutingMode {
    switch c?["moeupcycle"]?["routing"]?.stringValue {
    case "softmax_topk_renorm": return .softmaxTopKRenorm
    case "softmax_topk": return .softmaxTopK
    case "topk_softmax": return .topKSoftmax
    default: return renormalizes(c) ? .softmaxTopKRenorm : .softmaxTopK
    }
  }

  /// The role of a checkpoint name of this format; nil for a name it does not use.
  package func role(of name: String) -> TensorRole? {
    var parts = name.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
    if parts.last == "weight" || parts.last == "bias" { parts.removeLast() }
    if parts.count > 3, parts[0] == "model", parts[1] == "layers", Int(parts[2]) != nil { parts.removeFirst(3) }
    // Any expert number reads as expert 0.
    let path = parts.map { Int($0) != nil ? "0" : $0 }.joined(separator: ".")
    return TensorRole.allCases.first { self.path($0, expert: 0) == path }
  }

  /// The checkpoint name of an MoE layer's weight.
  package func name(_ w: LayerWeight, layer: Int, expert: Int = -1) -> String {
    name(TensorRole(w), layer: layer, expert: expert)
  }

  /// A dense layer's FFN names: gate, up, down.
  package func denseFFN(layer l: Int) -> (gate: String, up: String, down: String) {
    (name(.ffnGate, layer: l), name(.ffnUp, layer: l), name(.ffnDown, layer: l))
  }

  /// Norms and attention tensors of layer `l` of `d`, with their shapes, in file order.
  package func attentionTensors(_ d: ModelDescription, layer l: Int) -> [(String, [Int])] {
    var out: [(String, [Int])] = [(name(.inputNorm, layer: l), TensorRole.inputNorm.shape(in: d))]
    for role in [TensorRole.query, .key, .value] {
      out.append((name(role, layer: l), role.shape(in: d)))
      if d.qkvBias { out.append((name(role, layer: l, "bias"), role.shape(in: d, bias: true))) }
    }
    out.append((name(.attentionOutput, layer: l), TensorRole.attentionOutput.shape(in: d)))
    out.append((name(.postNorm, layer: l), TensorRole.postNorm.shape(in: d)))
    return out
  }

  /// The roles of an MoE layer of `d` in file order: the router, each expert's
  /// projections, then the shared expert and its gate when it has one.
  package func moeTensors(_ d: ModelDescription, layer l: Int) -> [(name: String, role: TensorRole, expert: Int, shape: [Int])] {
    guard let moe = d.moe else { return [] }
    func entry(_ role: TensorRole, _ e: Int = -1) -> (name: String, role: TensorRole, expert: Int, shape: [Int]) {
      (name(role, layer: l, expert: e), role, e, role.shape(in: d))
    }
    var out = [entry(.router)]
    for e in 0..<moe.numExperts { out += expertOrder.map { entry(.expert($0), e) } }
    if moe.sharedExpertIntermediateSize > 0 {
      out += [entry(.sharedGate), entry(.sharedUp), entry(.sharedDown), entry(.sharedExpertGate)]
    }
    return out
  }

  /// Every tensor of a model described by `d`, in file order.
  package func tensors(_ d: ModelDescription) -> [(name: String, shape: [Int])] {
    var out = [(name(.embedding), TensorRole.embedding.shape(in: d))]
    for l in 0..<d.numLayers {
      out += attentionTensors(d, layer: l)
      if let moe = d.moe, moe.moeLayers[l] {
        out += moeTensors(d, layer: l).map { ($0.name, $0.shape) }
      } else {
        out += [TensorRole.ffnGate, .ffnUp, .ffnDown].map { (name($0, layer: l), $0.shape(in: d)) }
      }
    }
    out.append((name(.finalNorm), TensorRole.finalNorm.shape(in: d)))
    if !d.tiedEmbeddings { out.append((name(.lmHead), TensorRole.lmHead.shape(in: d))) }
    return out
  }
}

/// Typed access to a config.json's fields, with errors naming the file.
package struct ConfigFields {
  package let json: JSON
  package let what: String

  package func int(_ key: String) throws -> Int {
    guard let v = json[key] else { throw MoEError.format("\(what): missing '\(key)'") }
    guard let i = v.intValue else { throw MoEError.format("\(what): '\(key)' is not an integer") }
    return i
  }

  func optInt(_ key: String) throws -> Int? {
    guard let v = json[key], !v.isNull else { return nil }
    guard let i = v.intValue else { throw MoEError.format("\(what): '\(key)' is not an integer") }
    return i
  }
}

// MARK: - Registry

/// The one list of checkpoint formats: which layout reads an input and which writes an output.
package enum CheckpointLayouts {
  /// HF formats, in the order an MoE layer's names are tried (`moe(in:layer:)`).
  package static let hf: [any HFLayout] = [HFDenseLayout(), HFMixtralLayout(), HFQwen2MoeLayout()]

  /// GGUF architectures.
  package static let gguf: [any GGUFArchitectureLayout] = [GGUFLlamaLayout(), GGUFQwen2Layout(), GGUFQwen2MoeLayout()]

  /// The role of an HF tensor name in any HF format; nil for a name none uses.
  package static func role(ofHF name: String) -> TensorRole? {
    hf.lazy.compactMap { $0.role(of: name) }.first
  }

  /// The HF format of an architecture.
  package static func hf(_ a: Architecture) -> any HFLayout {
    hf.first { $0.architectures.contains(a) } ?? HFDenseLayout()
  }

  /// The HF format whose names layer `l`'s MoE tensors have in `source`: the
  /// first whose router is there; else the names under `mlp.` that
  /// transformers uses now (Qwen2-MoE's; Mixtral's own since transformers 5).
  package static func moe(in source: TensorSource, layer l: Int) -> any HFLayout {
    hf.first { $0.holdsMoE(source, layer: l) } ?? HFQwen2MoeLayout()
  }

  /// The GGUF architecture an HF architecture is written as.
  package static func gguf(_ a: Architecture) -> any GGUFArchitectureLayout {
    gguf.first { $0.architectures.contains(a) } ?? GGUFLlamaLayout()
  }

  /// The GGUF architecture named `name` (`general.architecture`); nil for one the library does not read.
  package static func gguf(named name: String) -> (any GGUFArchitectureLayout)? {
    gguf.first { $0.name == name }
  }
}

extension ModelDescription {
  /// The HF format of the model's architecture.
  package var hf: any HFLayout { CheckpointLayouts.hf(architecture) }
}
