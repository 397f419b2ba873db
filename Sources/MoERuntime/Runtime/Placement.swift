// Placement of expert weights across NUMA nodes: pure data, computed from the
// layer's shape and the workers of each node, so it can be tested on synthetic
// topologies and printed by `moeupcycle topology`.

import MoESupport

/// How expert weights are spread over NUMA nodes.
public enum PlacementPolicy: Int32, Sendable, CaseIterable {
  /// Each node owns a slice of every expert's intermediate dimension (rows of
  /// gate/up, the matching columns of down) and computes a partial output;
  /// partial outputs are summed in node order.
  case rowSlice = 0
  /// Each node owns whole experts, chosen so expected load per worker is balanced.
  case expert = 1
  /// One copy, pages interleaved over all nodes; all workers share all experts.
  case interleave = 2
  /// One copy, no binding; all workers share all experts.
  case none = 3

  public var name: String {
    switch self {
    case .rowSlice: return "row-slice"
    case .expert: return "expert"
    case .interleave: return "interleave"
    case .none: return "none"
    }
  }

  public init?(name: String) {
    guard let p = PlacementPolicy.allCases.first(where: { $0.name == name }) else { return nil }
    self = p
  }
}

/// The workers of one NUMA node, as the plan sees them.
public struct NodeWorkers: Sendable, Equatable {
  public var node: Int
  public var workers: [Int]
  public init(node: Int, workers: [Int]) {
    self.node = node
    self.workers = workers
  }
}

public struct PlacementPlan: Sendable, Equatable {
  /// Rows `ffn` of expert `expert`'s intermediate dimension.
  public struct Slice: Sendable, Equatable {
    public var expert: Int
    public var ffn: Range<Int>
  }

  /// Weights held on one node (nil: not bound) and the workers that compute with them.
  public struct Shard: Sendable, Equatable {
    public var node: Int?
    public var workers: [Int]
    public var slices: [Slice]
  }

  public let policy: PlacementPolicy
  public let shards: [Shard]

  /// True when some expert is split over several shards, so partial outputs must be summed.
  public var splitsExperts: Bool {
    var seen = Set<Int>()
    for s in shards {
      for slice in s.slices where !seen.insert(slice.expert).inserted { return true }
    }
    return false
  }

  /// Row granularity of row-slice splits: slices start at multiples of this
  /// (by default; quantized rows need whole blocks of 32).
  public static let alignment = 16

  /// Plans placement of experts with intermediate sizes `ffnSizes` (routed
  /// experts first, a shared expert last if any) and relative expected loads
  /// (tokens per call; e.g. K/E for routed experts and 1 for a shared expert).
  /// `nodes` lists the nodes that have workers, in node order. Row-slice
  /// splits fall on multiples of `alignment`.
  public static func make(policy: PlacementPolicy, ffnSizes: [Int], expectedLoad: [Double],
                          nodes: [NodeWorkers], alignment: Int = alignment) throws -> PlacementPlan {
    guard ffnSizes.count == expectedLoad.count else {
      throw MoEError.invalid("placement: \(ffnSizes.count) expert sizes but \(expectedLoad.count) loads")
    }
    let nodes = nodes.filter { !$0.workers.isEmpty }
    guard !nodes.isEmpty else { throw MoEError.invalid("placement: no node has a worker") }
    let allWorkers = nodes.flatMap(\.workers)
    let whole = ffnSizes.enumerated().map { Slice(expert: $0.offset, ffn: 0..<$0.element) }

    switch policy {
    case .interleave, .none:
      return PlacementPlan(policy: policy, shards: [Shard(node: nil, workers: allWorkers, slices: whole)])
    case _ where nodes.count == 1:
      return PlacementPlan(policy: policy, shards: [Shard(node: nodes[0].node, workers: allWorkers, slices: whole)])
    case .rowSlice:
      // Split each expert's rows in proportion to the nodes' worker counts.
      let total = allWorkers.count
      var shards = nodes.map { Shard(node: $0.node, workers: $0.workers, slices: []) }
      for (e, f) in ffnSizes.enumerated() {
        var start = 0
        var cumulative = 0
        for (i, n) in nodes.enumerated() {
          cumulative += n.workers.count
          var end = i == nodes.count - 1 ? f : alignedSplit(f, cumulative, total, alignment)
          end = max(end, start)
          if end > start { shards[i].slices.append(Slice(expert: e, ffn: start..<end)) }
          start = end
        }
      }
      return PlacementPlan(policy: policy, shards: shards)
    case .expert:
      // Longest-processing-time first: heaviest expert to the node whose load
      // per worker would be lowest after taking it (ties to the lower node).
      var shards = nodes.map { Shard(node: $0.node, workers: $0.workers, slices: []) }
      var load = [Double](repeating: 0, count: nodes.count)
      let cost = ffnSizes.indices.map { Double(ffnSizes[$0]) * max(expectedLoad[$0], 0) }
      let order = ffnSizes.indices.sorted { cost[$0] > cost[$1] || (cost[$0] == cost[$1] && $0 < $1) }
      for e in order {
        var best = 0
        var bestValue = Double.infinity
        for i in nodes.indices {
          let v = (load[i] + cost[e]) / Double(nodes[i].workers.count)
          if v < bestValue { best = i; bestValue = v }
        }
        load[best] += cost[e]
        shards[best].slices.append(whole[e])
      }
      for i in shards.indices { shards[i].slices.sort { $0.expert < $1.expert } }
      return PlacementPlan(policy: policy, shards: shards)
    }
  }

  /// round(f * part / total) rounded to the alignment.
  private static func alignedSplit(_ f: Int, _ part: Int, _ total: Int, _ alignment: Int) -> Int {
    let exact = Double(f) * Double(part) / Double(total)
    let aligned = Int((exact / Double(alignment)).rounded()) * alignment
    return min(aligned, f)
  }

  /// The plan as JSON, for `moeupcycle topology --json` and tests.
  public func json() -> JSON {
    .object([
      ("policy", .string(policy.name)),
      ("splits_experts", .bool(splitsExperts)),
      ("shards", .array(shards.map { s in
        .object([
          ("node", s.node.map { .int($0) } ?? .null),
          ("workers", .array(s.workers.map { .int($0) })),
          ("slices", .array(s.slices.map { sl in
            .object([("expert", .int(sl.expert)),
                     ("ffn_begin", .int(sl.ffn.lowerBound)),
                     ("ffn_end", .int(sl.ffn.upperBound))])
          })),
        ])
      })),
    ])
  }
}

// MARK: - Names

extension PlacementPolicy: NamedCase {
  public var caseName: String { name }
}
