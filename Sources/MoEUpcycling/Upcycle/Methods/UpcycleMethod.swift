// The registry of upcycling methods: each method is one type (one file in
// this directory) holding its validation, the size and layout of its
// experts, what it changes in an expert after copying it, and what the output
// config records about it. ExpertBuilder and Upcycler ask the registry and
// never switch on the method. docs/architecture.md gives the recipe for a new
// method.

import MoESupport
import MoEFormats

/// Where a layer's experts come from: the neurons of the dense FFN each
/// expert holds (nil = all of them) and the scales of its projections.
public struct ExpertLayout: Sendable {
  public var neurons: [[Int]]?
  public var gateUpScale: Float = 1
  public var downScale: Float = 1
  /// Per-expert, per-neuron factors on down_proj's columns (on top of downScale); nil = none.
  public var downColumnScales: [[Float]]? = nil
}

/// What a method builds one layer's experts from.
public struct LayerContext {
  public var options: UpcycleOptions
  public var layer: Int
  public var dense: DenseFFN
  public var data: LayerData
  /// The dense neurons the routed experts are built from (all of them unless
  /// a shared expert takes the most frequently firing ones), sorted.
  public var pool: [Int]
  /// Intermediate size of each routed expert.
  public var expertSize: Int
}

/// One upcycling method.
public protocol UpcycleMethod: Sendable {
  /// The method's name (the C enum's name and the config's "method").
  var name: String { get }
  /// Whether building reads calibration statistics.
  func needsStatistics(_ o: UpcycleOptions) -> Bool
  /// Checks the method's options for routed experts built from `intermediate` neurons.
  func validate(_ o: UpcycleOptions, intermediate I: Int) throws
  /// The intermediate size of each routed expert.
  func expertSize(_ o: UpcycleOptions, intermediate I: Int) -> Int
  /// A layer's experts (before a shared expert halves the routed outputs).
  func layout(_ c: LayerContext) throws -> ExpertLayout
  /// Changes expert `e`'s projection `p` after it was copied and before it is scaled.
  func adjust(_ b: ExpertBuilder, expert e: Int, _ p: Projection, _ dst: UnsafeMutablePointer<Float>)
  /// Experts that share one router row (granular: the G experts of a virtual expert).
  func routerGroup(_ o: UpcycleOptions) -> Int
  /// The method's fields in the output config's `moeupcycle` block.
  func record(_ o: UpcycleOptions) -> [(String, JSON)]
}

extension UpcycleMethod {
  public func validate(_ o: UpcycleOptions, intermediate I: Int) throws {
    guard o.granularity == 0 || o.granularity == 1 else {
      throw MoEError.invalid("granularity applies to the granular and partition methods only")
    }
  }
  public func needsStatistics(_ o: UpcycleOptions) -> Bool { false }
  public func expertSize(_ o: UpcycleOptions, intermediate I: Int) -> Int { I }
  public func layout(_ c: LayerContext) throws -> ExpertLayout { ExpertLayout(neurons: nil) }
  public func adjust(_ b: ExpertBuilder, expert e: Int, _ p: Projection, _ dst: UnsafeMutablePointer<Float>) {}
  public func routerGroup(_ o: UpcycleOptions) -> Int { 1 }
  public func record(_ o: UpcycleOptions) -> [(String, JSON)] { [] }
}

extension UpcycleOptions.Method {
  /// The method's implementation.
  public var rule: any UpcycleMethod {
    switch self {
    case .copy: return CopyMethod()
    case .drop: return DropMethod()
    case .noise: return NoiseMethod()
    case .granular: return GranularMethod()
    case .partition: return PartitionMethod()
    }
  }
}
