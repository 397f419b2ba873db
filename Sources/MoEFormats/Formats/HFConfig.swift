// HF config.json: reading one into a ModelDescription, and writing the config
// of every checkpoint the library produces (upcycled MoE checkpoints and models
// saved by training), readable by transformers 4.x and 5.x.
//
// transformers 5 types config fields strictly: a float field holding a JSON
// integer is refused. So every float-typed field is written as a JSON float
// (`floatFields`), values carried from a source config keep the source's JSON
// text, both dtype spellings are written (`torch_dtype` for 4.x, `dtype` for
// 5.x), and RoPE is written both ways (`rope_theta`/`rope_scaling` for 4.x,
// `rope_parameters` for 5.x).

import MoESupport

package enum HFConfig {
  // MARK: - Reading

  /// The architecture a config names (model_type, else its architectures class), or nil.
  package static func architectureName(_ c: JSON) -> String? {
    if let type = c["model_type"]?.stringValue { return type }
    if let cls = c["architectures"]?.arrayValue?.first?.stringValue, let arch = Architecture(hfClassName: cls) {
      return arch.rawValue
    }
    return nil
  }

  package static func describe(_ c: JSON, what: String) throws -> ModelDescription {
    guard c.objectValue != nil else { throw MoEError.format("\(what): not a JSON object") }
    let fields = ConfigFields(json: c, what: what)
    func tokenId(_ key: String) -> Int? {
      if let i = c[key]?.intValue { return i }
      if let a = c[key]?.arrayValue, let first = a.first?.intValue { return first }
      return nil
    }
    guard let typeName = architectureName(c) else { throw MoEError.format("\(what): no model_type") }
    guard let arch = Architecture(rawValue: typeName) else {
      throw MoEError.unsupported("\(what): model_type '\(typeName)' is not supported (llama, mistral, qwen2, mixtral, qwen2_moe)")
    }
    let layout = CheckpointLayouts.hf(arch)
    try layout.check(fields, architecture: arch)
    if let act = c["hidden_act"]?.stringValue, act != "silu" {
      throw MoEError.unsupported("\(what): hidden_act '\(act)' is not supported (SwiGLU with silu only)")
    }
    let hidden = try fields.int("hidden_size")
    let heads = try fields.int("num_attention_heads")
    let layers = try fields.int("num_hidden_layers")
    guard heads > 0 else { throw MoEError.format("\(what): num_attention_heads must be positive") }
    guard layers <= ModelDescription.maxLayers else {
      throw MoEError.format("\(what): num_hidden_layers \(layers) is more than \(ModelDescription.maxLayers)")
    }
    var ropeTheta = c["rope_theta"]?.doubleValue
    if ropeTheta == nil { ropeTheta = c["rope_parameters"]?["rope_theta"]?.doubleValue }
    var intermediate = try fields.optInt("intermediate_size") ?? 0
    let moe = try layout.describe(fields, architecture: arch, layers: layers, intermediate: &intermediate)
    return ModelDescription(
      architecture: arch, numLayers: layers, hiddenSize: hidden,
      intermediateSize: intermediate,
      numHeads: heads, numKVHeads: try fields.optInt("num_key_value_heads") ?? heads,
      headDim: try fields.optInt("head_dim") ?? hidden / heads,
      vocabSize: try fields.int("vocab_size"),
      maxPositionEmbeddings: try fields.optInt("max_position_embeddings") ?? 2048,
      ropeTheta: ropeTheta ?? 10000, rmsNormEps: c["rms_norm_eps"]?.doubleValue ?? 1e-6,
      tiedEmbeddings: c["tie_word_embeddings"]?.boolValue ?? false,
      qkvBias: layout.qkvBias(arch),
      bosTokenId: tokenId("bos_token_id"), eosTokenId: tokenId("eos_token_id"),
      moe: moe, sourceConfig: c)
  }

  // MARK: - Writing

  /// Routing settings an MoE config records that the description does not hold.
  package struct Routing {
    /// Qwen2-MoE: renormalize the top-k routing weights (Mixtral always does).
    package var normTopKProb: Bool
    package var routerAuxLossCoef: Double

    package init(normTopKProb: Bool, routerAuxLossCoef: Double) {
      self.normTopKProb = normTopKProb
      self.routerAuxLossCoef = routerAuxLossCoef
    }
  }

  /// Fields transformers types as float (in any of the five architectures).
  static let floatFields = ["initializer_range", "rms_norm_eps", "rope_theta", "attention_dropout",
                            "router_aux_loss_coef", "router_jitter_noise"]

  /// Float-typed keys of `rope_parameters` (and of the older `rope_scaling`).
  static let ropeFloatFields = ["rope_theta", "factor", "attention_factor", "beta_fast", "beta_slow",
                                "low_freq_factor", "high_freq_factor", "mscale", "mscale_all_dim",
                                "partial_rotary_factor"]

  /// Float-list keys of `rope_parameters` / `rope_scaling`.
  static let ropeFloatListFields = ["short_factor", "long_factor"]

  /// Keys a config of another architecture (the dense source of an upcycled
  /// checkpoint) passes on exactly as it wrote them, where the output's
  /// architecture has them. Everything else comes from the description.
  static let carriedFields = ["max_position_embeddings", "initializer_range", "rms_norm_eps", "rope_theta",
                              "rope_scaling", "rope_parameters", "sliding_window", "use_sliding_window",
                              "max_window_layers", "attention_dropout", "attention_bias", "pad_token_id",
                              "bos_token_id", "eos_token_id"]

  /// The dtype name transformers uses for `dtype`.
  package static func dtypeName(_ t: DType) -> String {
    switch t {
    case .bf16: return "bfloat16"
    case .f16: return "float16"
    default: return "float32"
    }
  }

  /// config.json for a checkpoint of `d` whose weights are stored as `dtype`.
  ///
  /// A source config of the same architecture (`d.sourceConfig`, a model saved
  /// by training) is kept whole, key order included. Otherwise the config is
  /// built from the description (MoE configs need `routing`), taking
  /// `carriedFields` from the source config as it wrote them. Then, in both
  /// cases: float-typed fields become JSON floats, `torch_dtype` and `dtype`
  /// are set, and `rope_theta`, `rope_parameters` (and `rope_scaling` for a
  /// scaled RoPE) are completed from each other.
  package static func make(_ d: ModelDescription, dtype: DType, routing: Routing? = nil) throws -> JSON {
    let source = d.sourceConfig?.objectValue != nil ? d.sourceConfig : nil
    // An MoE read from GGUF has no config.json: its routing is the one it was
    // loaded with (Mixtral renormalizes, llama.cpp's qwen2moe does not), with
    // transformers' default load-balancing coefficients.
    var routing = routing
    if routing == nil, source == nil, d.moe != nil { routing = d.hf.defaultRouting }
    var c: JSON
    if let source, architectureName(source) == d.architecture.rawValue {
      c = source
    } else {
      let fields = try built(d, routing: routing)
      var pairs = fields.compactMap { key, value in value.map { (key, $0) } }
      if let source {
        for (key, _) in fields where carriedFields.contains(key) {
          guard let value = source[key] else { continue }
          if let i = pairs.firstIndex(where: { $0.0 == key }) { pairs[i].1 = value } else { pairs.append((key, value)) }
        }
      }
      c = .object(pairs)
    }
    for key in floatFields { if let v = c[key] { c.set(key, v.asFloat) } }
    completeRoPE(&c, theta: d.ropeTheta)
    c.set("torch_dtype", .string(dtypeName(dtype)))
    c.set("dtype", .string(dtypeName(dtype)))
    return c
  }

  /// The fields of an architecture's config, in the order they are written, with
  /// their values from the description; nil values are written only when carried
  /// from a source config.
  private static func built(_ d: ModelDescription, routing: Routing?) throws -> [(String, JSON?)] {
    let moe = d.moe
    if d.architecture.isMoE && (moe == nil || routing == nil) {
      throw MoEError.unsupported("an \(d.architecture.rawValue) config needs MoE settings, and the model has no source config.json to carry over")
    }
    var c: [(String, JSON?)] = [
      ("architectures", .array([.string(d.architecture.hfClassName)])),
      ("model_type", .string(d.architecture.rawValue)),
      ("vocab_size", .int(d.vocabSize)),
      ("hidden_size", .int(d.hiddenSize)),
      ("intermediate_size", .int(d.hf.configIntermediateSize(d))),
      ("num_hidden_layers", .int(d.numLayers)),
      ("num_attention_heads", .int(d.numHeads)),
      ("num_key_value_heads", .int(d.numKVHeads)),
      ("head_dim", .int(d.headDim)),
      ("hidden_act", .string("silu")),
      ("max_position_embeddings", .int(d.maxPositionEmbeddings)),
      ("initializer_range", .float(0.02)),
      ("rms_norm_eps", .float(d.rmsNormEps)),
      ("use_cache", .bool(true)),
      ("rope_theta", .float(d.ropeTheta)),
      ("attention_dropout", .float(0)),
      ("tie_word_embeddings", .bool(d.tiedEmbeddings)),
    ]
    c += d.hf.configFields(d, routing: routing)
    c += [
      ("pad_token_id", nil),
      ("bos_token_id", d.bosTokenId.map { .int($0) }),
      ("eos_token_id", d.eosTokenId.map { .int($0) }),
      ("rope_scaling", nil),
      ("rope_parameters", nil),
    ]
    return c
  }

  /// RoPE for both transformers generations: `rope_theta` (a float) at the top
  /// level; `rope_parameters` with `rope_type`, `rope_theta` and any scaling
  /// keys; and `rope_scaling` (4.x) when the RoPE is scaled. What the config
  /// already has wins; the rest is derived from it.
  private static func completeRoPE(_ c: inout JSON, theta: Double) {
    func floats(_ v: JSON) -> JSON {
      guard var pairs = v.objectValue else { return v }
      for i in pairs.indices {
        if ropeFloatFields.contains(pairs[i].0) { pairs[i].1 = pairs[i].1.asFloat }
        if ropeFloatListFields.contains(pairs[i].0), let items = pairs[i].1.arrayValue {
          pairs[i].1 = .array(items.map(\.asFloat))
        }
      }
      return .object(pairs)
    }
    let scaling = c["rope_scaling"].flatMap { $0.objectValue != nil ? floats($0) : nil }
    if let scaling { c.set("rope_scaling", scaling) }
    func number(_ v: JSON?) -> JSON? { v.flatMap { $0.isNumber ? $0.asFloat : nil } }
    let thetaValue = number(c["rope_theta"]) ?? number(c["rope_parameters"]?["rope_theta"]) ?? .float(theta)
    c.set("rope_theta", thetaValue)

    var parameters: JSON
    if let given = c["rope_parameters"], given.objectValue != nil {
      parameters = floats(given)
      if parameters["rope_type"] == nil {
        parameters.set("rope_type", parameters["type"] ?? .string("default"))
        parameters.remove("type")
      }
      if parameters["rope_theta"] == nil { parameters.set("rope_theta", thetaValue) }
    } else {
      let type = scaling?["rope_type"] ?? scaling?["type"] ?? .string("default")
      var pairs: [(String, JSON)] = [("rope_type", type), ("rope_theta", thetaValue)]
      for (key, value) in scaling?.objectValue ?? [] where !["type", "rope_type", "rope_theta"].contains(key) {
        pairs.append((key, value))
      }
      parameters = .object(pairs)
    }
    c.set("rope_parameters", parameters)

    if scaling == nil, let type = parameters["rope_type"]?.stringValue, type != "default" {
      var legacy = parameters
      legacy.remove("rope_theta")
      c.set("rope_scaling", legacy)
    }
  }
}
