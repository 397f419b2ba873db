import Testing
@testable import MoESupport
@testable import MoERuntime
@testable import MoEModel
import CMoECPU

#if canImport(Glibc)
import Glibc
#endif

@Suite(.serialized) struct TrainerTests {
  static func tinyModel(_ arch: String, tag: String) throws -> (DecoderModel, String) {
    let dir = "/tmp/moeupcycle-train-\(getpid())-\(arch)-\(tag)"
    FileSystem.removeTree(dir)
    try DecoderGradientTests.writeModel(dir, arch: arch, tied: true, bias: false)
    var options = ModelLoadOptions()
    options.weightDType = .f32
    return (try DecoderModel(path: dir, runtime: try Runtime(threads: 2, pin: false), options: options), dir)
  }

  /// A tiny model memorizes a short repeating sequence: loss falls near zero.
  @Test(arguments: ["llama", "mixtral"])
  func overfitsATinyBatch(arch: String) throws {
    let (model, dir) = try Self.tinyModel(arch, tag: "overfit")
    defer { FileSystem.removeTree(dir) }
    let pattern: [Int32] = [5, 9, 1, 33, 12, 7, 21, 3, 30, 18]
    var options = TrainerOptions()
    options.seqLen = 9
    options.batch = 2
    options.steps = 80
    options.lr = 1e-2
    options.schedule = .constant
    options.weightDecay = 0
    options.evalFraction = 0
    let trainer = try Trainer(model: model, tokens: Array((0..<30).flatMap { _ in pattern }), options: options)
    var first = 0.0, last = 0.0
    for s in 0..<options.steps {
      let stats = try trainer.trainStep()
      if s == 0 { first = stats.loss }
      last = stats.loss
      #expect(stats.loss.isFinite && stats.gradNorm.isFinite)
    }
    #expect(first > 2, "initial loss \(first)")
    #expect(last < 0.1, "\(arch): loss \(first) -> \(last)")
  }

  /// Experts read in place from the checkpoint's mapping give the logits and
  /// training steps of copied ones, bit for bit; training copies them into
  /// owned memory first and leaves the file as it was.
  @Test func mappedExpertsMatchCopiedOnes() throws {
    let dir = "/tmp/moeupcycle-train-\(getpid())-mapped"
    FileSystem.removeTree(dir)
    defer { FileSystem.removeTree(dir) }
    try DecoderGradientTests.writeModel(dir, arch: "mixtral", tied: true, bias: false)
    let file = FileSystem.join(dir, "model.safetensors")
    let before = try FileSystem.readAll(file)
    func load(map: Bool) throws -> DecoderModel {
      var options = ModelLoadOptions()
      options.weightDType = .f32
      options.mapExperts = map
      return try DecoderModel(path: dir, runtime: try Runtime(threads: 2, pin: false), options: options)
    }
    let mapped = try load(map: true), copied = try load(map: false)
    let moe = mapped.layers.compactMap(\.moe)
    #expect(!moe.isEmpty && moe.allSatisfy { $0.expertsMapped && $0.ownedBytes == 0 && $0.mappedBytes > 0 })
    #expect(copied.layers.compactMap(\.moe).allSatisfy { !$0.expertsMapped && $0.mappedBytes == 0 })
    #expect(mapped.weightBytes == copied.weightBytes)
    // With two NUMA nodes the experts are copied onto their nodes.
    let twoNodes = try DecoderModel(path: dir, runtime: try Runtime(threads: 2, source: .synthetic("pack:2 [numa] core:1 pu:1"),
                                                                    pin: false))
    #expect(twoNodes.layers.compactMap(\.moe).allSatisfy { !$0.expertsMapped && $0.ownedBytes > 0 })
    let tokens: [Int32] = [5, 9, 1, 33, 12, 7, 21, 3, 30, 18]
    var a = [Float](repeating: 0, count: tokens.count * mapped.vocabSize), b = a
    try a.withUnsafeMutableBufferPointer { try mapped.logits(tokens: tokens, into: $0.baseAddress!) }
    try b.withUnsafeMutableBufferPointer { try copied.logits(tokens: tokens, into: $0.baseAddress!) }
    #expect(a.map(\.bitPattern) == b.map(\.bitPattern))

    var options = TrainerOptions()
    options.seqLen = 9
    options.batch = 2
    options.steps = 3
    options.evalFraction = 0
    let data = Array((0..<30).flatMap { _ in tokens })
    let t1 = try Trainer(model: mapped, tokens: data, options: options)
    #expect(moe.allSatisfy { !$0.expertsMapped && $0.ownedBytes > 0 && $0.mappedBytes == 0 })
    let t2 = try Trainer(model: copied, tokens: data, options: options)
    for _ in 0..<options.steps {
      let (s1, s2) = (try t1.trainStep(), try t2.trainStep())
      #expect(s1.loss.bitPattern == s2.loss.bitPattern && s1.gradNorm.bitPattern == s2.gradNorm.bitPattern)
    }
    #expect(try FileSystem.readAll(file) == before)
  }

  /// The vector AdamW kernel against its plain loop, bit for bit: runs whose
  /// lengths leave tails of every size, with and without decay and clipping,
  /// moments from a first step and from later ones; gradients end zero.
  @Test func adamWKernelMatchesThePlainLoop() {
    var rng = Rng(seed: 29)
    for count in [1, 15, 16, 17, 33, 250] {
      for (keep, clip, step) in [(Float(1), Float(1), Float(1)), (0.99998, 0.25, 7)] {
        let s = moe_adamw_step(clip_scale: clip, beta1: 0.9, beta2: 0.95, c1: 1 / (1 - powf(0.9, step)),
                               c2: 1 / (1 - powf(0.95, step)), lr: 2e-4, eps: 1e-8, keep: keep)
        // w, g, m, v: moments from a first step are zero, later ones are not.
        let start = (0..<4).map { k in
          (0..<count).map { _ in k >= 2 && step == 1 ? 0 : k == 3 ? abs(Float(rng.normal())) * 1e-3 : Float(rng.normal()) }
        }
        var kernel = start.flatMap { $0 }, plain = kernel
        kernel.withUnsafeMutableBufferPointer { b in
          let p = b.baseAddress!
          var k = s
          moe_adamw_f32(p, p + count, p + 2 * count, p + 3 * count, count, &k)
        }
        plain.withUnsafeMutableBufferPointer { b in
          let p = b.baseAddress!
          Trainer.adamWReference(w: p, g: p + count, m: p + 2 * count, v: p + 3 * count, count: count, s)
        }
        #expect(kernel.map(\.bitPattern) == plain.map(\.bitPattern), "count \(count) keep \(keep) step \(step)")
        #expect(kernel[count..<(2 * count)].allSatisfy { $0 == 0 })
        // The weights moved: a kernel that skipped the update would fail here.
        #expect(zip(kernel[0..<count], start[0]).contains { $0 != $1 })
      }
    }
  }

  @Test func scheduleWarmsUpThenDecaysToTheFloor() throws {
    let (model, dir) = try Self.tinyModel("llama", tag: "schedule")
    defer { FileSystem.removeTree(dir) }
    var o = TrainerOptions()
    o.seqLen = 4
    o.steps = 110
    o.warmup = 10
    o.lr = 1e-3
    o.minLR = 1e-4
    let trainer = try Trainer(model: model, tokens: Array(repeating: 1, count: 64), options: o)
    #expect(abs(trainer.learningRate(at: 0) - 1e-4) < 1e-9)
    #expect(abs(trainer.learningRate(at: 9) - 1e-3) < 1e-9)
    #expect(abs(trainer.learningRate(at: 60) - 5.5e-4) < 1e-6)
    #expect(abs(trainer.learningRate(at: 110) - 1e-4) < 1e-9)
  }

  @Test func trainOnlySelectsParameters() throws {
    let (model, dir) = try Self.tinyModel("mixtral", tag: "only")
    defer { FileSystem.removeTree(dir) }
    var o = TrainerOptions()
    o.seqLen = 4
    let tokens = Array(repeating: Int32(1), count: 64)
    o.trainOnly = .routers
    let routers = try Trainer(model: model, tokens: tokens, options: o).trainableParameters
    o.trainOnly = .moe
    let moe = try Trainer(model: model, tokens: tokens, options: o).trainableParameters
    o.trainOnly = .all
    let all = try Trainer(model: model, tokens: tokens, options: o).trainableParameters
    let H = DecoderGradientTests.H, E = DecoderGradientTests.experts, F = DecoderGradientTests.F
    #expect(routers == 2 * E * H)
    #expect(moe == 2 * (E * H + 3 * E * F * H))
    #expect(all > moe)
    // Frozen parameters do not move.
    o.trainOnly = .routers
    o.evalFraction = 0
    let trainer = try Trainer(model: model, tokens: Array((0..<64).map { Int32($0 % 40) }), options: o)
    let before = Array(UnsafeBufferPointer(start: model.layers[0].qkv.storage.pointer, count: 10))
    _ = try trainer.trainStep()
    #expect(Array(UnsafeBufferPointer(start: model.layers[0].qkv.storage.pointer, count: 10)) == before)
  }

  @Test func rejectsBadSettings() throws {
    let (model, dir) = try Self.tinyModel("llama", tag: "bad")
    defer { FileSystem.removeTree(dir) }
    var o = TrainerOptions()
    o.seqLen = 100
    #expect(throws: MoEError.self) { try Trainer(model: model, tokens: Array(repeating: 1, count: 50), options: o) }
    o = TrainerOptions()
    o.lr = -1
    #expect(throws: MoEError.self) { try Trainer(model: model, tokens: Array(repeating: 1, count: 500), options: o) }
    o = TrainerOptions()
    #expect(throws: MoEError.self) { try Trainer(model: model, tokens: [1, 2, 99], options: o) }
  }
}
