import Testing
@testable import MoESupport
@testable import MoEFormats
@testable import MoERuntime
@testable import MoEModel

#if canImport(Glibc)
import Glibc
#endif

/// Finite-difference checks of the whole decoder's backward on tiny models.
@Suite(.serialized) struct DecoderGradientTests {
  static let H = 16, heads = 4, kvHeads = 2, F = 24, V = 40, layers = 2, experts = 4

  /// Writes a tiny HF checkpoint (config.json + model.safetensors) with seeded weights.
  static func writeModel(_ dir: String, arch: String, tied: Bool, bias: Bool) throws {
    try FileSystem.makeDirectory(dir)
    let hd = H / heads
    var tensors: [(name: String, dtype: DType, shape: [Int])] = [("model.embed_tokens.weight", .f32, [V, H]),
                                                                 ("model.norm.weight", .f32, [H])]
    if !tied { tensors.append(("lm_head.weight", .f32, [V, H])) }
    for l in 0..<layers {
      let p = "model.layers.\(l)."
      tensors += [(p + "input_layernorm.weight", .f32, [H]), (p + "post_attention_layernorm.weight", .f32, [H]),
                  (p + "self_attn.q_proj.weight", .f32, [heads * hd, H]), (p + "self_attn.k_proj.weight", .f32, [kvHeads * hd, H]),
                  (p + "self_attn.v_proj.weight", .f32, [kvHeads * hd, H]), (p + "self_attn.o_proj.weight", .f32, [H, heads * hd])]
      if bias {
        tensors += [(p + "self_attn.q_proj.bias", .f32, [heads * hd]), (p + "self_attn.k_proj.bias", .f32, [kvHeads * hd]),
                    (p + "self_attn.v_proj.bias", .f32, [kvHeads * hd])]
      }
      if arch == "mixtral" {
        tensors.append((p + "block_sparse_moe.gate.weight", .f32, [experts, H]))
        for e in 0..<experts {
          let b = p + "block_sparse_moe.experts.\(e)."
          tensors += [(b + "w1.weight", .f32, [F, H]), (b + "w2.weight", .f32, [H, F]), (b + "w3.weight", .f32, [F, H])]
        }
      } else {
        tensors += [(p + "mlp.gate_proj.weight", .f32, [F, H]), (p + "mlp.up_proj.weight", .f32, [F, H]),
                    (p + "mlp.down_proj.weight", .f32, [H, F])]
      }
    }
    let out = try OutputFile(path: FileSystem.join(dir, "model.safetensors"))
    try out.write(Safetensors.headerBytes(tensors: tensors, metadata: []))
    var rng = Rng(seed: 7)
    for t in tensors {
      let norm = t.name.hasSuffix("norm.weight")
      let values = (0..<t.shape.reduce(1, *)).map { _ in Float(norm ? 1 + 0.1 * rng.normal() : 0.3 * rng.normal()) }
      try values.withUnsafeBytes { try out.write($0) }
    }
    try out.close()
    var config = """
      {"architectures": ["\(arch == "mixtral" ? "MixtralForCausalLM" : arch == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM")"],
       "model_type": "\(arch)", "hidden_size": \(H), "intermediate_size": \(F), "num_attention_heads": \(heads),
       "num_key_value_heads": \(kvHeads), "num_hidden_layers": \(layers), "vocab_size": \(V), "rms_norm_eps": 1e-5,
       "rope_theta": 10000.0, "max_position_embeddings": 64, "tie_word_embeddings": \(tied), "hidden_act": "silu"
      """
    if arch == "mixtral" { config += ", \"num_local_experts\": \(experts), \"num_experts_per_tok\": 2" }
    try FileSystem.writeText(config + "}", to: FileSystem.join(dir, "config.json"))
  }

  /// One perturbable parameter: read and write an element, read its gradient.
  struct Parameter {
    var name: String
    var count: Int
    var get: (Int) -> Float
    var set: (Int, Float) -> Void
    var gradient: (Int) -> Float
  }

  static func parameters(_ m: DecoderModel, _ g: DecoderGradients) -> [Parameter] {
    func dense(_ name: String, _ w: DenseWeight, _ grad: AlignedBuffer) -> Parameter {
      Parameter(name: name, count: w.rows * w.cols, get: { w.storage.pointer[$0] }, set: { w.storage.pointer[$0] = $1 },
                gradient: { grad.pointer[$0] })
    }
    func vector(_ name: String, _ v: AlignedBuffer, _ grad: AlignedBuffer, _ n: Int) -> Parameter {
      Parameter(name: name, count: n, get: { v.pointer[$0] }, set: { v.pointer[$0] = $1 }, gradient: { grad.pointer[$0] })
    }
    var out = [dense("embedding", m.embedding, g.embedding), vector("final norm", m.finalNorm, g.finalNorm, H)]
    if let lm = g.lmHead { out.append(dense("lm_head", m.lmHead, lm)) }
    for (l, layer) in m.layers.enumerated() {
      let gl = g.layers[l]
      out += [vector("L\(l) input norm", layer.inputNorm, gl.inputNorm, H), vector("L\(l) post norm", layer.postNorm, gl.postNorm, H),
              dense("L\(l) qkv", layer.qkv, gl.qkv), dense("L\(l) o_proj", layer.output, gl.output)]
      if let b = layer.qkv.bias, let gb = gl.qkvBias { out.append(vector("L\(l) qkv bias", b, gb, layer.qkv.rows)) }
      if let gu = layer.gateUp, let ggu = gl.gateUp { out.append(dense("L\(l) gate/up", gu, ggu)) }
      if let d = layer.down, let gd = gl.down { out.append(dense("L\(l) down", d, gd)) }
      if let moe = layer.moe {
        for kind in [LayerWeight.router, .gate, .up, .down] {
          let n = (try? moe.elementCount(of: kind, expert: -1)) ?? 0
          out.append(Parameter(name: "L\(l) moe \(kind.name)", count: n, get: { i in
            var all = [Float](repeating: 0, count: n)
            try? all.withUnsafeMutableBufferPointer { try moe.getWeight(kind, expert: -1, out: $0.baseAddress!, count: n) }
            return all[i]
          }, set: { i, v in
            var all = [Float](repeating: 0, count: n)
            try? all.withUnsafeMutableBufferPointer { try moe.getWeight(kind, expert: -1, out: $0.baseAddress!, count: n) }
            all[i] = v
            try? all.withUnsafeBufferPointer { try moe.setWeight(kind, expert: -1, data: $0.baseAddress!, count: n) }
          }, gradient: { i in
            var all = [Float](repeating: 0, count: n)
            try? all.withUnsafeMutableBufferPointer { try moe.getGradient(kind, expert: -1, out: $0.baseAddress!, count: n) }
            return all[i]
          }))
        }
      }
    }
    return out
  }

  /// The MoE layers' routing support (which experts each token used), to skip flipped decisions.
  static func routingPattern(_ m: DecoderModel) -> [[Bool]] {
    m.layers.compactMap { $0.moe?.denseRoutingWeights().map { $0 != 0 } }
  }

  @Test(arguments: [("llama", true, false, false), ("llama", false, false, true), ("qwen2", false, true, false),
                     ("mixtral", true, false, false), ("mixtral", false, false, true)])
  func backwardMatchesFiniteDifferences(arch: String, tied: Bool, bias: Bool, recompute: Bool) throws {
    let dir = "/tmp/moeupcycle-grad-\(getpid())-\(arch)-\(tied)"
    FileSystem.removeTree(dir)
    defer { FileSystem.removeTree(dir) }
    try Self.writeModel(dir, arch: arch, tied: tied, bias: bias)
    let runtime = try Runtime(threads: 2, pin: false)
    var options = ModelLoadOptions()
    options.weightDType = .f32
    let model = try DecoderModel(path: dir, runtime: runtime, options: options)
    for l in model.layers { try l.moe?.setLossCoefficients(balance: 0, z: 0) }
    // Two sequences of 6 tokens (each predicting 5) in one pass.
    let tokens: [Int32] = [3, 17, 5, 39, 0, 22, 8, 8, 31, 12, 1, 30]
    let grads = try DecoderGradients(model: model)
    _ = try model.accumulateGradients(tokens: tokens, sequences: 2, lossScale: 1, grads: grads, recompute: recompute)
    let scratchGrads = try DecoderGradients(model: model)
    func loss() throws -> Double {
      try model.accumulateGradients(tokens: tokens, sequences: 2, lossScale: 0, grads: scratchGrads, recompute: recompute)
    }
    let base = Self.routingPattern(model)
    var rng = Rng(seed: 11)
    var checked = 0
    for p in Self.parameters(model, grads) {
      for _ in 0..<4 {
        let i = rng.below(p.count)
        let w = p.get(i)
        let eps: Float = 2e-3
        p.set(i, w + eps)
        let plus = try loss()
        let patternPlus = Self.routingPattern(model)
        p.set(i, w - eps)
        let minus = try loss()
        let patternMinus = Self.routingPattern(model)
        p.set(i, w)
        guard patternPlus == base, patternMinus == base else { continue }
        let numeric = (plus - minus) / Double(2 * eps)
        let analytic = Double(p.gradient(i))
        #expect(abs(numeric - analytic) <= 2e-2 * max(abs(numeric), abs(analytic)) + 2e-3,
                "\(arch) \(p.name)[\(i)]: analytic \(analytic) vs numeric \(numeric)")
        checked += 1
      }
    }
    #expect(checked >= 20)
  }
}
