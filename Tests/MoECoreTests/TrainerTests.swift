import Testing
@testable import MoESupport
@testable import MoERuntime
@testable import MoEModel

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
