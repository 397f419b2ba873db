import Testing
@testable import MoESupport
@testable import MoEFormats
@testable import MoERuntime
@testable import MoEModel
@testable import MoEUpcycling

#if canImport(Glibc)
import Glibc
#endif

/// DecoderModel.save: tiny Llama, Qwen2, Mixtral (legacy and fused experts),
/// Qwen2-MoE (upcycled) and GGUF sources written back and reloaded.
@Suite(.serialized) struct ModelWriterTests {
  typealias Tiny = DecoderGradientTests
  static let tokens: [Int32] = [3, 17, 5, 39, 0, 22, 8, 8, 31, 12]

  // MARK: - Helpers

  /// A fresh empty directory under /tmp, removed by the caller.
  static func scratchDirectory(_ tag: String) throws -> String {
    let dir = "/tmp/moecore-mw-\(getpid())-\(tag)-\(UInt32.random(in: 0...UInt32.max))"
    try FileSystem.makeDirectory(dir)
    return dir
  }

  static func load(_ path: String, weights: DType? = .f32) throws -> DecoderModel {
    var options = ModelLoadOptions()
    options.weightDType = weights
    return try DecoderModel(path: path, runtime: try Runtime(threads: 2, pin: false), options: options)
  }

  static func logits(_ m: DecoderModel) throws -> [Float] {
    var out = [Float](repeating: 0, count: tokens.count * m.vocabSize)
    try out.withUnsafeMutableBufferPointer { try m.logits(tokens: tokens, into: $0.baseAddress!) }
    return out
  }

  static func bitwiseEqual(_ a: [Float], _ b: [Float]) -> Bool {
    a.count == b.count && zip(a, b).allSatisfy { $0.bitPattern == $1.bitPattern }
  }

  /// Tensor names, shapes and values (as f32, bit for bit) of two checkpoint directories agree.
  static func expectSameTensors(_ a: String, _ b: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let sa = try SafetensorsSource(directory: a), sb = try SafetensorsSource(directory: b)
    #expect(Set(sa.tensorNames) == Set(sb.tensorNames), "tensor names differ", sourceLocation: sourceLocation)
    for name in sa.tensorNames {
      guard let ia = sa.info(name), let ib = sb.info(name) else { continue }
      #expect(ia.shape == ib.shape, "\(name): shape \(ia.shape) vs \(ib.shape)", sourceLocation: sourceLocation)
      guard ia.shape == ib.shape else { continue }
      let va = try sa.readFloat(name, shape: ia.shape), vb = try sb.readFloat(name, shape: ib.shape)
      let firstDifference = va.indices.first { va[$0].bitPattern != vb[$0].bitPattern }
      #expect(firstDifference == nil, "\(name): values differ from element \(firstDifference ?? 0)", sourceLocation: sourceLocation)
    }
  }

  static func readJSON(_ path: String) throws -> JSON {
    try JSONParser.parse(try FileSystem.readAll(path), what: path)
  }

  static func expectError(_ kind: MoEErrorKind, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
    do {
      try body()
      Issue.record("expected a \(kind) error", sourceLocation: sourceLocation)
    } catch let e as MoEError {
      #expect(e.kind == kind, "got \(e.kind): \(e.message)", sourceLocation: sourceLocation)
    } catch {
      Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
    }
  }

  /// A byte-level BPE vocabulary of 30 tokens (space, a-z, "th", <s>, </s>) padded to `size`.
  static func tinyVocabulary(size: Int) -> (tokens: [String], types: [Int64]) {
    var tokens = [ByteLevel.encoded([UInt8(ascii: " ")])] + (UInt8(ascii: "a")...UInt8(ascii: "z")).map { ByteLevel.encoded([$0]) }
    tokens += ["th", "<s>", "</s>"]
    var types = [Int64](repeating: 1, count: 28) + [3, 3]
    while tokens.count < size { tokens.append("[UNUSED_\(tokens.count)]"); types.append(5) }
    return (tokens, types)
  }

  /// HF tokenizer files for `tinyVocabulary` in `dir`.
  static func writeTokenizerFiles(_ dir: String) throws {
    let (tokens, _) = tinyVocabulary(size: 30)
    let added: [JSON] = [(28, "<s>"), (29, "</s>")].map { id, content in
      .object([("id", .int(id)), ("content", .string(content)), ("special", .bool(true)),
               ("lstrip", .bool(false)), ("rstrip", .bool(false)), ("normalized", .bool(false))])
    }
    let tokenizer: JSON = .object([
      ("version", .string("1.0")),
      ("added_tokens", .array(added)),
      ("normalizer", .null),
      ("pre_tokenizer", .object([("type", .string("ByteLevel")), ("add_prefix_space", .bool(false)), ("use_regex", .bool(true))])),
      ("decoder", .object([("type", .string("ByteLevel"))])),
      ("model", .object([("type", .string("BPE")),
                         ("vocab", .object(tokens.enumerated().map { ($0.element, .int($0.offset)) })),
                         ("merges", .array([.string("t h")]))])),
    ])
    try FileSystem.writeText(tokenizer.serialized(), to: FileSystem.join(dir, "tokenizer.json"))
    try FileSystem.writeText(#"{"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": true}"#,
                             to: FileSystem.join(dir, "tokenizer_config.json"))
    try FileSystem.writeText(#"{"bos_token": "<s>", "eos_token": "</s>"}"#, to: FileSystem.join(dir, "special_tokens_map.json"))
    try FileSystem.writeText(#"{"bos_token_id": 28, "eos_token_id": 29, "do_sample": true, "temperature": 0.7}"#,
                             to: FileSystem.join(dir, "generation_config.json"))
  }

  /// Writes a tiny GGUF v3 llama or qwen2 checkpoint (f32 tensors, byte-level BPE tokenizer metadata).
  static func writeGGUF(_ path: String, arch: String, tied: Bool, bias: Bool) throws {
    let H = Tiny.H, heads = Tiny.heads, kvHeads = Tiny.kvHeads, F = Tiny.F, V = Tiny.V, hd = H / heads
    let (tokens, types) = tinyVocabulary(size: V)
    let metadata: [(String, GGUFValue)] = [
      ("general.architecture", .string(arch)),
      ("\(arch).embedding_length", .uint(UInt64(H))),
      ("\(arch).attention.head_count", .uint(UInt64(heads))),
      ("\(arch).attention.head_count_kv", .uint(UInt64(kvHeads))),
      ("\(arch).block_count", .uint(UInt64(Tiny.layers))),
      ("\(arch).feed_forward_length", .uint(UInt64(F))),
      ("\(arch).context_length", .uint(64)),
      ("\(arch).rope.freq_base", .float(10000)),
      ("\(arch).attention.layer_norm_rms_epsilon", .float(1e-6)),
      ("tokenizer.ggml.model", .string("gpt2")),
      ("tokenizer.ggml.pre", .string("default")),
      ("tokenizer.ggml.tokens", .array(tokens.map { .string($0) })),
      ("tokenizer.ggml.token_type", .array(types.map { .int($0) })),
      ("tokenizer.ggml.merges", .array([.string("t h")])),
      ("tokenizer.ggml.bos_token_id", .uint(28)),
      ("tokenizer.ggml.eos_token_id", .uint(29)),
    ]
    // GGML names with HF shapes ([rows, cols]; GGUF stores dims reversed).
    var tensors: [(String, [Int])] = [("token_embd.weight", [V, H]), ("output_norm.weight", [H])]
    if !tied { tensors.append(("output.weight", [V, H])) }
    for l in 0..<Tiny.layers {
      let b = "blk.\(l)."
      tensors += [(b + "attn_norm.weight", [H]), (b + "attn_q.weight", [heads * hd, H]), (b + "attn_k.weight", [kvHeads * hd, H]),
                  (b + "attn_v.weight", [kvHeads * hd, H]), (b + "attn_output.weight", [H, heads * hd]),
                  (b + "ffn_norm.weight", [H]), (b + "ffn_gate.weight", [F, H]), (b + "ffn_up.weight", [F, H]),
                  (b + "ffn_down.weight", [H, F])]
      if bias { tensors += [(b + "attn_q.bias", [heads * hd]), (b + "attn_k.bias", [kvHeads * hd]), (b + "attn_v.bias", [kvHeads * hd])] }
    }
    var rng = Rng(seed: 5)
    let withValues = tensors.map { (name, shape) -> (String, [Int], [Float]) in
      let norm = name.hasSuffix("norm.weight")
      return (name, shape, (0..<shape.reduce(1, *)).map { _ in Float(norm ? 1 + 0.1 * rng.normal() : 0.3 * rng.normal()) })
    }
    try writeGGUFFile(path, metadata: metadata, tensors: withValues)
  }

  /// Rewrites a legacy Mixtral checkpoint with fused experts under mlp.
  /// (gate.weight, experts.gate_up_proj [E, 2F, H] gate rows first, experts.down_proj [E, H, F]).
  static func writeFusedMixtral(from legacy: String, to dir: String) throws {
    try FileSystem.makeDirectory(dir)
    let src = try SafetensorsSource(directory: legacy)
    let E = Tiny.experts, F = Tiny.F, H = Tiny.H
    var tensors: [(name: String, dtype: DType, shape: [Int])] = []
    var data: [[Float]] = []
    for name in src.tensorNames where !name.contains("block_sparse_moe") {
      let info = try src.require(name)
      tensors.append((name, .f32, info.shape))
      data.append(try src.readFloat(name, shape: info.shape))
    }
    for l in 0..<Tiny.layers {
      let b = ModelDescription.layerPrefix(l) + "block_sparse_moe.", m = ModelDescription.layerPrefix(l) + "mlp."
      tensors.append((m + "gate.weight", .f32, [E, H]))
      data.append(try src.readFloat(b + "gate.weight", shape: [E, H]))
      var gateUp: [Float] = [], down: [Float] = []
      for e in 0..<E {
        gateUp += try src.readFloat(b + "experts.\(e).w1.weight", shape: [F, H])
        gateUp += try src.readFloat(b + "experts.\(e).w3.weight", shape: [F, H])
        down += try src.readFloat(b + "experts.\(e).w2.weight", shape: [H, F])
      }
      tensors += [(m + "experts.gate_up_proj", .f32, [E, 2 * F, H]), (m + "experts.down_proj", .f32, [E, H, F])]
      data += [gateUp, down]
    }
    let out = try OutputFile(path: FileSystem.join(dir, "model.safetensors"))
    try out.write(Safetensors.headerBytes(tensors: tensors, metadata: []))
    for values in data { try values.withUnsafeBytes { try out.write($0) } }
    try out.close()
    try FileSystem.copyFile(FileSystem.join(legacy, "config.json"), FileSystem.join(dir, "config.json"))
  }

  // MARK: - Round trips

  @Test(arguments: [("llama", true, false), ("llama", false, false), ("qwen2", false, true), ("mixtral", true, false),
                    ("mixtral", false, false)])
  func savedModelReloadsBitIdentical(arch: String, tied: Bool, bias: Bool) throws {
    let dir = try Self.scratchDirectory("\(arch)-\(tied)")
    defer { FileSystem.removeTree(dir) }
    let src = FileSystem.join(dir, "src"), out = FileSystem.join(dir, "out")
    try Tiny.writeModel(src, arch: arch, tied: tied, bias: bias)
    let model = try Self.load(src)
    try model.save(to: out, source: src)
    let reloaded = try Self.load(out)
    #expect(Self.bitwiseEqual(try Self.logits(model), try Self.logits(reloaded)))
    // Same names, shapes and bits as the source (which uses the names save writes).
    try Self.expectSameTensors(src, out)
    #expect(try FileSystem.listDirectory(out) == ["config.json", "generation_config.json", "model.safetensors"])
    // config.json: the source's, with RoPE parameters and both dtype spellings added.
    var expected = try Self.readJSON(FileSystem.join(src, "config.json"))
    expected.set("rope_parameters", .object([("rope_type", .string("default")), ("rope_theta", .float(10000))]))
    expected.set("torch_dtype", .string("float32"))
    expected.set("dtype", .string("float32"))
    #expect(try Self.readJSON(FileSystem.join(out, "config.json")) == expected)
    // The saved checkpoint saves again to the same bytes.
    let again = FileSystem.join(dir, "again")
    try reloaded.save(to: again, source: out)
    for name in ["config.json", "model.safetensors"] {
      #expect(try FileSystem.readAll(FileSystem.join(out, name)) == FileSystem.readAll(FileSystem.join(again, name)))
    }
  }

  @Test func upcycledQwen2MoEKeepsSharedExpertAndRecord() throws {
    let dir = try Self.scratchDirectory("qwen2moe")
    defer { FileSystem.removeTree(dir) }
    let dense = FileSystem.join(dir, "dense"), src = FileSystem.join(dir, "src"), out = FileSystem.join(dir, "out")
    try Tiny.writeModel(dense, arch: "llama", tied: false, bias: false)
    var o = UpcycleOptions()
    o.format = .qwen2Moe
    o.numExperts = 4
    o.topK = 2
    o.method = .noise
    o.routerStd = 0.5
    o.layers = "1"
    o.dtype = .f32
    o.seed = 3
    o.threads = 1
    o.routing = .softmaxTopK
    _ = try Upcycler(checkpoint: try Checkpoint(path: dense), options: o).write(to: src, progress: nil)
    let model = try Self.load(src)
    #expect(model.numMoELayers == 1)
    try model.save(to: out, source: src)
    let reloaded = try Self.load(out)
    #expect(Self.bitwiseEqual(try Self.logits(model), try Self.logits(reloaded)))
    try Self.expectSameTensors(src, out)
    let names = try SafetensorsSource(directory: out).tensorNames
    #expect(names.contains("model.layers.1.mlp.shared_expert.down_proj.weight"))
    #expect(names.contains("model.layers.1.mlp.shared_expert_gate.weight"))
    #expect(names.contains("model.layers.1.mlp.experts.3.up_proj.weight"))
    #expect(names.contains("model.layers.0.mlp.gate_proj.weight"))
    let config = try Self.readJSON(FileSystem.join(out, "config.json"))
    let source = try Self.readJSON(FileSystem.join(src, "config.json"))
    #expect(config["moeupcycle"] != nil && config["moeupcycle"] == source["moeupcycle"])
    #expect(config["moeupcycle"]?["routing"]?.stringValue == "softmax_topk")
    #expect(config["model_type"]?.stringValue == "qwen2_moe" && config["torch_dtype"]?.stringValue == "float32")
    #expect(try FileSystem.readAll(FileSystem.join(out, "generation_config.json"))
            == FileSystem.readAll(FileSystem.join(src, "generation_config.json")))
  }

  @Test func fusedMixtralIsWrittenPerExpert() throws {
    let dir = try Self.scratchDirectory("fused")
    defer { FileSystem.removeTree(dir) }
    let legacy = FileSystem.join(dir, "legacy"), fused = FileSystem.join(dir, "fused"), out = FileSystem.join(dir, "out")
    try Tiny.writeModel(legacy, arch: "mixtral", tied: false, bias: false)
    try Self.writeFusedMixtral(from: legacy, to: fused)
    #expect(try SafetensorsSource(directory: fused).info("model.layers.0.mlp.experts.gate_up_proj") != nil)
    let model = try Self.load(fused)
    try model.save(to: out, source: fused)
    let reloaded = try Self.load(out)
    #expect(Self.bitwiseEqual(try Self.logits(model), try Self.logits(reloaded)))
    #expect(Self.bitwiseEqual(try Self.logits(reloaded), try Self.logits(try Self.load(legacy))))
    // The legacy per-expert names and values of the checkpoint the fused one was made from.
    try Self.expectSameTensors(legacy, out)
  }

  @Test(arguments: [("llama", true, false), ("qwen2", false, true)])
  func ggufSourceGetsBuiltConfigAndTokenizer(arch: String, tied: Bool, bias: Bool) throws {
    let dir = try Self.scratchDirectory("gguf-\(arch)")
    defer { FileSystem.removeTree(dir) }
    let gguf = FileSystem.join(dir, "tiny.gguf"), out = FileSystem.join(dir, "out")
    try Self.writeGGUF(gguf, arch: arch, tied: tied, bias: bias)
    let model = try Self.load(gguf)
    try model.save(to: out, source: gguf)
    let reloaded = try Self.load(out)
    #expect(Self.bitwiseEqual(try Self.logits(model), try Self.logits(reloaded)))
    let c = try Self.readJSON(FileSystem.join(out, "config.json"))
    let archName = arch == "llama" ? "LlamaForCausalLM" : "Qwen2ForCausalLM"
    #expect(c["architectures"] == .array([.string(archName)]) && c["model_type"]?.stringValue == arch)
    #expect(c["hidden_size"]?.intValue == Tiny.H && c["intermediate_size"]?.intValue == Tiny.F)
    #expect(c["num_attention_heads"]?.intValue == Tiny.heads && c["num_key_value_heads"]?.intValue == Tiny.kvHeads)
    #expect(c["head_dim"]?.intValue == Tiny.H / Tiny.heads && c["num_hidden_layers"]?.intValue == Tiny.layers)
    #expect(c["vocab_size"]?.intValue == Tiny.V && c["max_position_embeddings"]?.intValue == 64)
    #expect(c["tie_word_embeddings"]?.boolValue == tied && c["hidden_act"]?.stringValue == "silu")
    #expect(c["bos_token_id"]?.intValue == 28 && c["eos_token_id"]?.intValue == 29)
    #expect(c["torch_dtype"]?.stringValue == "float32" && c["dtype"]?.stringValue == "float32")
    #expect(c["rope_theta"] == .float(10000))
    // GGUF holds eps as f32: written as the shortest decimal of that f32.
    #expect(c["rms_norm_eps"] == .float(1e-6) && Float(1e-6) == Float(model.description.rmsNormEps))
    let configText = String(decoding: try FileSystem.readAll(FileSystem.join(out, "config.json")), as: UTF8.self)
    #expect(configText.contains("\"rms_norm_eps\": 1e-06,"))
    let names = try FileSystem.listDirectory(out)
    for n in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"] {
      #expect(names.contains(n), "\(n) missing")
    }
    let text = "the cat that sat"
    let original = try model.requireTokenizer(), exported = try reloaded.requireTokenizer()
    #expect(exported.encode(text, addSpecial: true) == original.encode(text, addSpecial: true))
    #expect(exported.bosTokenId == 28 && exported.eosTokenId == 29)
    #expect(try Self.readJSON(FileSystem.join(out, "generation_config.json"))["eos_token_id"]?.intValue == 29)
  }

  @Test func tokenizerFilesAreCopied() throws {
    let dir = try Self.scratchDirectory("tokenizer")
    defer { FileSystem.removeTree(dir) }
    let src = FileSystem.join(dir, "src"), out = FileSystem.join(dir, "out"), bare = FileSystem.join(dir, "bare")
    try Tiny.writeModel(src, arch: "qwen2", tied: true, bias: true)
    try Self.writeTokenizerFiles(src)
    let model = try Self.load(src)
    #expect(model.tokenizer != nil)
    try model.save(to: out, source: src)
    for n in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"] {
      #expect(try FileSystem.readAll(FileSystem.join(out, n)) == FileSystem.readAll(FileSystem.join(src, n)), "\(n) differs")
    }
    let reloaded = try Self.load(out)
    let text = "the thin cat"
    #expect(try reloaded.requireTokenizer().encode(text, addSpecial: true) == model.requireTokenizer().encode(text, addSpecial: true))
    // Without `source`, the checkpoint the model was loaded from is used.
    try model.save(to: bare)
    #expect(try FileSystem.readAll(FileSystem.join(bare, "tokenizer.json")) == FileSystem.readAll(FileSystem.join(src, "tokenizer.json")))
    #expect(try Self.load(bare).tokenizer != nil)
  }

  @Test func bf16CheckpointsReloadClose() throws {
    let dir = try Self.scratchDirectory("bf16")
    defer { FileSystem.removeTree(dir) }
    let src = FileSystem.join(dir, "src"), half = FileSystem.join(dir, "half")
    try Tiny.writeModel(src, arch: "mixtral", tied: false, bias: false)
    let model = try Self.load(src)
    try model.save(to: half, dtype: .bf16, source: src)
    let st = try SafetensorsSource(directory: half)
    #expect(st.tensorNames.allSatisfy { st.info($0)?.dtype == .bf16 })
    #expect(try Self.readJSON(FileSystem.join(half, "config.json"))["torch_dtype"]?.stringValue == "bfloat16")
    let exact = try Self.logits(model), rounded = try Self.logits(try Self.load(half))
    // bf16 keeps 8 bits of mantissa; through two layers the logits move by ~1% of their range.
    let scale = exact.map { abs($0) }.max() ?? 0
    let worst = zip(exact, rounded).map { abs($0 - $1) }.max() ?? 0
    #expect(scale > 1 && worst <= 0.02 * scale, "bf16 logits differ by up to \(worst) (largest logit \(scale))")
    #expect(!Self.bitwiseEqual(exact, rounded))
    // A model held in bf16 writes its values exactly: as bf16 (same bits) and as f32 (widened).
    let held = try Self.load(half, weights: nil)
    #expect(held.weightDType == .bf16)
    let again = FileSystem.join(dir, "again"), wide = FileSystem.join(dir, "wide")
    try held.save(to: again, dtype: .bf16, source: half)
    try held.save(to: wide, dtype: .f32, source: half)
    #expect(try FileSystem.readAll(FileSystem.join(again, "model.safetensors"))
            == FileSystem.readAll(FileSystem.join(half, "model.safetensors")))
    try Self.expectSameTensors(half, wide)
    #expect(Self.bitwiseEqual(try Self.logits(try Self.load(wide)), rounded))
  }

  @Test func shardedCheckpointsReload() throws {
    let dir = try Self.scratchDirectory("shards")
    defer { FileSystem.removeTree(dir) }
    let src = FileSystem.join(dir, "src"), out = FileSystem.join(dir, "out")
    try Tiny.writeModel(src, arch: "mixtral", tied: false, bias: false)
    let model = try Self.load(src)
    try model.save(to: out, dtype: .f32, force: false, extraFiles: [], source: src, maxShardBytes: 8 << 10)
    let names = try FileSystem.listDirectory(out)
    let shards = names.filter { $0.hasPrefix("model-") && $0.hasSuffix(".safetensors") }
    #expect(shards.count > 2 && !names.contains("model.safetensors") && names.contains("model.safetensors.index.json"))
    #expect(shards.first == "model-00001-of-\(String(repeating: "0", count: 5 - String(shards.count).count))\(shards.count).safetensors")
    let index = try Self.readJSON(FileSystem.join(out, "model.safetensors.index.json"))
    let dataBytes = try SafetensorsSource(directory: src).dataBytes
    #expect(index["metadata"]?["total_size"]?.intValue == dataBytes)
    #expect(Self.bitwiseEqual(try Self.logits(model), try Self.logits(try Self.load(out))))
    try Self.expectSameTensors(src, out)
  }

  // MARK: - The output directory

  @Test func existingOutputNeedsForce() throws {
    let dir = try Self.scratchDirectory("force")
    defer { FileSystem.removeTree(dir) }
    let src = FileSystem.join(dir, "src"), out = FileSystem.join(dir, "out")
    try Tiny.writeModel(src, arch: "llama", tied: true, bias: false)
    let model = try Self.load(src)
    try model.save(to: out)
    Self.expectError(.exists) { try model.save(to: out) }
    let state: [UInt8] = [0, 1, 2, 255, 42]
    try model.save(to: out + "/", force: true, extraFiles: [ExtraFile("optimizer.bin", bytes: state), ExtraFile("trainer.json", bytes: Array(#"{"step": 7}"#.utf8))])
    #expect(try FileSystem.readAll(FileSystem.join(out, "optimizer.bin")) == state)
    #expect(try Self.readJSON(FileSystem.join(out, "trainer.json"))["step"]?.intValue == 7)
    // Replacing writes a whole new directory: the extra files of the old one are gone.
    try model.save(to: out, force: true)
    #expect(try FileSystem.listDirectory(out) == ["config.json", "generation_config.json", "model.safetensors"])
    // Over the checkpoint the model was loaded from (a training run saving over
    // the checkpoint it resumed from): only with force, and the result reloads.
    Self.expectError(.exists) { try model.save(to: src) }
    try model.save(to: src, force: true)
    #expect(FileSystem.isRegularFile(FileSystem.join(src, "model.safetensors")))
    _ = try Self.load(src)
    // Never over a directory holding the source.
    Self.expectError(.invalidArgument) { try model.save(to: dir, force: true, source: src) }
    #expect(try FileSystem.listDirectory(dir) == ["out", "src"])
  }

  @Test func failedSavesLeaveNothingBehind() throws {
    let dir = try Self.scratchDirectory("fail")
    defer { FileSystem.removeTree(dir) }
    let parent = FileSystem.join(dir, "checkpoints"), src = FileSystem.join(dir, "src")
    try FileSystem.makeDirectory(parent)
    try Tiny.writeModel(src, arch: "qwen2", tied: false, bias: true)
    let model = try Self.load(src)
    let out = FileSystem.join(parent, "step-1")
    // Fails after the weights are written: the file name is too long for the file system.
    let tooLong = String(repeating: "x", count: 300)
    Self.expectError(.io) { try model.save(to: out, extraFiles: [ExtraFile(tooLong, bytes: [1])], source: src) }
    #expect(try FileSystem.listDirectory(parent).isEmpty)
    // Rejected up front.
    Self.expectError(.unsupported) { try model.save(to: out, dtype: .f16) }
    for bad in ["", ".", "..", "a/b", "config.json", "model.safetensors", "model-00001-of-00002.safetensors", "tokenizer.json"] {
      Self.expectError(.invalidArgument) { try model.save(to: out, extraFiles: [ExtraFile(bad, bytes: [])]) }
    }
    Self.expectError(.invalidArgument) { try model.save(to: out, extraFiles: [ExtraFile("a", bytes: []), ExtraFile("a", bytes: [])]) }
    Self.expectError(.notFound) { try model.save(to: FileSystem.join(dir, "missing/step-1")) }
    Self.expectError(.notFound) { try model.save(to: out, source: FileSystem.join(dir, "nowhere")) }
    #expect(try FileSystem.listDirectory(parent).isEmpty)
    // A failed forced save keeps the checkpoint it would have replaced.
    try model.save(to: out, extraFiles: [ExtraFile("state", bytes: [9])])
    Self.expectError(.io) { try model.save(to: out, force: true, extraFiles: [ExtraFile(tooLong, bytes: [1])]) }
    #expect(try FileSystem.listDirectory(parent) == ["step-1"])
    #expect(try FileSystem.readAll(FileSystem.join(out, "state")) == [9])
    #expect(Self.bitwiseEqual(try Self.logits(model), try Self.logits(try Self.load(out))))
  }
}

