// Routing: router logits -> which expert rows each token uses and with what
// combine weight; the backward from combine-weight gradients to logit
// gradients; the Switch load-balancing loss and the router z-loss.

import MoEFormats
import MoESupport
#if canImport(Glibc)
import Glibc
#endif

public struct RoutingConfig: Sendable, Equatable {
  public var experts: Int
  public var topK: Int
  public var mode: RoutingMode
  /// Token choice: 0 = dropless; > 0 = each expert keeps at most
  /// ceil(capacityFactor * T * topK / E) tokens, filled slot by slot (all first
  /// choices in token order, then all second choices, ...), the rest dropped.
  /// Expert choice: each expert takes ceil(capacityFactor * T * topK / E)
  /// tokens (at most T); 0 means 1.
  public var capacityFactor: Float
  /// Expert Choice routing (Zhou et al. 2022): experts pick tokens.
  public var expertChoice: Bool

  public init(experts: Int, topK: Int, mode: RoutingMode = .softmaxTopKRenorm,
              capacityFactor: Float = 0, expertChoice: Bool = false) {
    self.experts = experts
    self.topK = topK
    self.mode = mode
    self.capacityFactor = capacityFactor
    self.expertChoice = expertChoice
  }

  /// Per-expert capacity for T tokens, or nil when dropless.
  public func capacity(tokens: Int) -> Int? {
    if expertChoice {
      let cf = capacityFactor > 0 ? Double(capacityFactor) : 1
      return min(tokens, Int((cf * Double(tokens * topK) / Double(experts)).rounded(.up)))
    }
    guard capacityFactor > 0 else { return nil }
    return Int((Double(capacityFactor) * Double(tokens * topK) / Double(experts)).rounded(.up))
  }
}

/// The result of routing T tokens. Rows are token copies grouped by expert:
/// expert e owns rows expertOffsets[e] ..< expertOffsets[e+1], in token order.
public struct RoutingPlan {
  public let tokens: Int
  public let experts: Int
  public let topK: Int
  /// [E + 1] prefix sums of rows per expert.
  public var expertOffsets: [Int]
  /// [R] token of each row.
  public var rowToken: [Int32]
  /// [R] combine weight of each row.
  public var rowWeight: [Float]
  /// [R] expert of each row.
  public var rowExpert: [Int32]
  /// [T + 1] and [R]: the rows of token t, in combine order (slot order for
  /// token choice, expert order for expert choice).
  public var tokenRowOffsets: [Int]
  public var tokenRows: [Int32]
  /// Token choice only: [T, K] chosen expert, its weight before any drop, and
  /// its row (-1 when dropped by capacity).
  public var slotExpert: [Int32]
  public var slotWeight: [Float]
  public var slotRow: [Int32]
  /// [T, E] the router's probability distribution used by the balancing loss:
  /// softmax(logits), or sigmoid(logits) normalized to sum 1.
  public var probabilities: [Float]
  /// [E] selections per expert before capacity drops (token choice) or kept
  /// (expert choice): the f_e numerator of the balancing loss.
  public var selectedPerExpert: [Int]
  /// Token-choice assignments dropped by capacity.
  public var dropped: Int

  public var rows: Int { rowToken.count }
  public func rowsOf(expert e: Int) -> Int { expertOffsets[e + 1] - expertOffsets[e] }
}

/// Balancing and z-loss values of one forward (without their coefficients).
public struct RouterLosses: Equatable, Sendable {
  /// Switch: E * sum_e f_e * P_e, f_e = selections / (T*K), P_e = mean probability.
  public var balance: Float = 0
  /// mean over tokens of logsumexp(logits)^2.
  public var z: Float = 0
}

package enum Routing {
  /// Routes T tokens. logits: [T, E] row-major.
  package static func route(logits: UnsafePointer<Float>, tokens: Int, config: RoutingConfig) -> RoutingPlan {
    let E = config.experts, K = config.topK, T = tokens
    var probabilities = [Float](repeating: 0, count: T * E)
    var slotExpert = [Int32](), slotWeight = [Float](), slotRow = [Int32]()
    var selected = [Int](repeating: 0, count: E)
    var dropped = 0

    // Per-token probability distribution for the balancing loss.
    for t in 0..<T {
      let l = logits + t * E
      probabilities.withUnsafeMutableBufferPointer { q in
        let qt = q.baseAddress! + t * E
        if config.mode.usesSigmoid {
          var sum: Float = 0
          for e in 0..<E { qt[e] = sigmoidScalar(l[e]); sum += qt[e] }
          let inv = sum > 0 ? 1 / sum : 0
          for e in 0..<E { qt[e] *= inv }
        } else {
          softmax(l, qt, E)
        }
      }
    }

    // Which (token, expert) pairs are kept, with their weights.
    var keptToken = [Int32](), keptExpert = [Int32](), keptWeight = [Float]()
    if config.expertChoice {
      let cap = config.capacity(tokens: T) ?? T
      var order = [Int32](0..<Int32(T))
      for e in 0..<E {
        // Score of token t for expert e: softmax probability or sigmoid.
        let score: (Int) -> Float = { t in
          config.mode.usesSigmoid ? sigmoidScalar(logits[t * E + e]) : probabilities[t * E + e]
        }
        let scores = (0..<T).map(score)
        order.sort { a, b in
          let sa = scores[Int(a)], sb = scores[Int(b)]
          return sa > sb || (!(sb > sa) && a < b)
        }
        for i in 0..<cap {
          keptToken.append(order[i]); keptExpert.append(Int32(e)); keptWeight.append(scores[Int(order[i])])
        }
        selected[e] = cap
      }
    } else {
      slotExpert = [Int32](repeating: 0, count: T * K)
      slotWeight = [Float](repeating: 0, count: T * K)
      slotRow = [Int32](repeating: -1, count: T * K)
      var chosen = [Int](repeating: 0, count: K)
      var values = [Float](repeating: 0, count: K)
      for t in 0..<T {
        let l = logits + t * E
        topK(l, E, K, &chosen)
        switch config.mode {
        case .softmaxTopK:
          for k in 0..<K { values[k] = probabilities[t * E + chosen[k]] }
        case .softmaxTopKRenorm:
          var sum: Float = 0
          for k in 0..<K { values[k] = probabilities[t * E + chosen[k]]; sum += values[k] }
          for k in 0..<K { values[k] /= sum }
        case .topKSoftmax:
          let m = l[chosen[0]]
          var sum: Float = 0
          for k in 0..<K { values[k] = expf(l[chosen[k]] - m); sum += values[k] }
          for k in 0..<K { values[k] /= sum }
        case .sigmoidTopK:
          for k in 0..<K { values[k] = sigmoidScalar(l[chosen[k]]) }
        case .sigmoidTopKRenorm:
          var sum: Float = 0
          for k in 0..<K { values[k] = sigmoidScalar(l[chosen[k]]); sum += values[k] }
          let inv = sum > 0 ? 1 / sum : 0
          for k in 0..<K { values[k] *= inv }
        }
        for k in 0..<K {
          slotExpert[t * K + k] = Int32(chosen[k])
          slotWeight[t * K + k] = values[k]
          selected[chosen[k]] += 1
        }
      }
      // Capacity: fill slot by slot, tokens in order.
      let cap = config.capacity(tokens: T) ?? Int.max
      var count = [Int](repeating: 0, count: E)
      var keep = [Bool](repeating: false, count: T * K)
      for k in 0..<K {
        for t in 0..<T {
          let e = Int(slotExpert[t * K + k])
          if count[e] < cap { count[e] += 1; keep[t * K + k] = true } else { dropped += 1 }
        }
      }
      for t in 0..<T {
        for k in 0..<K where keep[t * K + k] {
          keptToken.append(Int32(t)); keptExpert.append(slotExpert[t * K + k]); keptWeight.append(slotWeight[t * K + k])
        }
      }
    }

    // Group kept pairs by expert, tokens in order within an expert (counting sort).
    var expertOffsets = [Int](repeating: 0, count: E + 1)
    for e in keptExpert { expertOffsets[Int(e) + 1] += 1 }
    for e in 0..<E { expertOffsets[e + 1] += expertOffsets[e] }
    let R = keptToken.count
    var rowToken = [Int32](repeating: 0, count: R)
    var rowWeight = [Float](repeating: 0, count: R)
    var rowExpert = [Int32](repeating: 0, count: R)
    // Stable by token: sort the pairs by (token) first, then place.
    let byToken = (0..<R).sorted { a, b in
      keptToken[a] < keptToken[b] || (keptToken[a] == keptToken[b] && keptExpert[a] < keptExpert[b])
    }
    var cursor = Array(expertOffsets[0..<E])
    var pairRow = [Int32](repeating: 0, count: R)
    for p in byToken {
      let e = Int(keptExpert[p])
      let r = cursor[e]
      cursor[e] += 1
      rowToken[r] = keptToken[p]
      rowWeight[r] = keptWeight[p]
      rowExpert[r] = Int32(e)
      pairRow[p] = Int32(r)
    }
    // Rows of each token in combine order: token choice in slot order, expert
    // choice in expert order (byToken already orders a token's pairs by expert).
    var tokenRowOffsets = [Int](repeating: 0, count: T + 1)
    for p in 0..<R { tokenRowOffsets[Int(keptToken[p]) + 1] += 1 }
    for t in 0..<T { tokenRowOffsets[t + 1] += tokenRowOffsets[t] }
    var tokenRows = [Int32](repeating: 0, count: R)
    if config.expertChoice {
      var fill = Array(tokenRowOffsets[0..<T])
      for p in byToken {
        let t = Int(keptToken[p])
        tokenRows[fill[t]] = pairRow[p]
        fill[t] += 1
      }
    } else {
      // keptToken is in (token, slot) order for token choice.
      var p = 0
      var fill = Array(tokenRowOffsets[0..<T])
      for t in 0..<T {
        for k in 0..<K where p < R && Int(keptToken[p]) == t && keptExpert[p] == slotExpert[t * K + k] {
          tokenRows[fill[t]] = pairRow[p]
          slotRow[t * K + k] = pairRow[p]
          fill[t] += 1
          p += 1
        }
      }
    }

    return RoutingPlan(tokens: T, experts: E, topK: K, expertOffsets: expertOffsets,
                       rowToken: rowToken, rowWeight: rowWeight, rowExpert: rowExpert,
                       tokenRowOffsets: tokenRowOffsets, tokenRows: tokenRows,
                       slotExpert: slotExpert, slotWeight: slotWeight, slotRow: slotRow,
                       probabilities: probabilities, selectedPerExpert: selected, dropped: dropped)
  }

  /// Loss values for the plan; logits: [T, E].
  package static func losses(logits: UnsafePointer<Float>, plan: RoutingPlan) -> RouterLosses {
    let T = plan.tokens, E = plan.experts
    guard T > 0 else { return RouterLosses() }
    var balance: Double = 0
    for e in 0..<E {
      var meanProb: Double = 0
      for t in 0..<T { meanProb += Double(plan.probabilities[t * E + e]) }
      meanProb /= Double(T)
      let f = Double(plan.selectedPerExpert[e]) / Double(T * plan.topK)
      balance += f * meanProb
    }
    var z: Double = 0
    for t in 0..<T {
      let lse = Double(logSumExp(logits + t * E, E))
      z += lse * lse
    }
    return RouterLosses(balance: Float(Double(E) * balance), z: Float(z / Double(T)))
  }

  /// Gradient of the router logits, written to dLogits [T, E] (overwritten):
  /// from the combine weights (dRowWeight [R]: dL/d rowWeight), plus
  /// balanceCoef * d(balance) and zCoef * d(z).
  package static func backward(logits: UnsafePointer<Float>, plan: RoutingPlan, config: RoutingConfig,
                               dRowWeight: UnsafePointer<Float>, balanceCoef: Float, zCoef: Float,
                               dLogits: UnsafeMutablePointer<Float>, tokenRange: Range<Int>) {
    let E = plan.experts, K = plan.topK, T = plan.tokens
    guard T > 0 else { return }
    var dScore = [Float](repeating: 0, count: E)   // gradient w.r.t. softmax p or sigmoid s
    var dWeight = [Float](repeating: 0, count: K)
    var dq = [Float](repeating: 0, count: E)       // gradient w.r.t. the balancing distribution
    for e in 0..<E {
      let f = Float(plan.selectedPerExpert[e]) / Float(T * K)
      dq[e] = balanceCoef * Float(E) * f / Float(T)
    }
    for t in tokenRange {
      let l = logits + t * E
      let dl = dLogits + t * E
      for e in 0..<E { dScore[e] = 0; dl[e] = 0 }
      if config.expertChoice {
        for i in plan.tokenRowOffsets[t]..<plan.tokenRowOffsets[t + 1] {
          let r = Int(plan.tokenRows[i])
          dScore[Int(plan.rowExpert[r])] += dRowWeight[r]
        }
      } else {
        for k in 0..<K {
          let r = Int(plan.slotRow[t * K + k])
          dWeight[k] = r >= 0 ? dRowWeight[r] : 0
        }
        let w = plan.slotWeight[(t * K)..<(t * K + K)]
        let base = t * K
        switch config.mode {
        case .softmaxTopK, .sigmoidTopK:
          for k in 0..<K { dScore[Int(plan.slotExpert[base + k])] += dWeight[k] }
        case .softmaxTopKRenorm, .sigmoidTopKRenorm:
          // w_k = v_k / S with S = sum of the chosen scores v.
          var sum: Float = 0, inner: Float = 0
          for k in 0..<K {
            let e = Int(plan.slotExpert[base + k])
            sum += config.mode.usesSigmoid ? sigmoidScalar(l[e]) : plan.probabilities[t * E + e]
            inner += dWeight[k] * w[base + k]
          }
          let inv = sum > 0 ? 1 / sum : 0
          for k in 0..<K { dScore[Int(plan.slotExpert[base + k])] += (dWeight[k] - inner) * inv }
        case .topKSoftmax:
          // Softmax over the chosen logits: straight to the logits.
          var inner: Float = 0
          for k in 0..<K { inner += dWeight[k] * w[base + k] }
          for k in 0..<K { dl[Int(plan.slotExpert[base + k])] += w[base + k] * (dWeight[k] - inner) }
        }
      }
      // Scores -> logits.
      if config.mode.usesSigmoid {
        // Balancing distribution q = s / sum(s): dq -> ds.
        var sumS: Float = 0
        for e in 0..<E { sumS += sigmoidScalar(l[e]) }
        var inner: Float = 0
        for e in 0..<E { inner += dq[e] * plan.probabilities[t * E + e] }
        let inv = sumS > 0 ? 1 / sumS : 0
        for e in 0..<E {
          let s = sigmoidScalar(l[e])
          let ds = dScore[e] + (dq[e] - inner) * inv
          dl[e] += ds * s * (1 - s)
        }
      } else {
        // p = softmax(l): dl = p * (dp - sum(p * dp)); dp = dScore + dq.
        var inner: Float = 0
        for e in 0..<E { inner += plan.probabilities[t * E + e] * (dScore[e] + dq[e]) }
        for e in 0..<E {
          let p = plan.probabilities[t * E + e]
          dl[e] += p * (dScore[e] + dq[e] - inner)
        }
      }
      // z-loss: d/dl (lse^2 / T) = 2 * lse * softmax(l) / T.
      if zCoef != 0 {
        let lse = logSumExp(l, E)
        let m = maxOf(l, E)
        let sumExp = expf(lse - m)
        for e in 0..<E {
          let p = expf(l[e] - m) / sumExp
          dl[e] += zCoef * 2 * lse * p / Float(T)
        }
      }
    }
  }

  // MARK: helpers

  /// Indices of the K largest of v[0..<n], largest first; ties to the lower index.
  package static func topK(_ v: UnsafePointer<Float>, _ n: Int, _ k: Int, _ out: inout [Int]) {
    for j in 0..<k {
      var best = -1
      for i in 0..<n {
        var taken = false
        for q in 0..<j where out[q] == i { taken = true; break }
        if taken { continue }
        if best < 0 || v[i] > v[best] || (v[best].isNaN && !v[i].isNaN) { best = i }
      }
      out[j] = best
    }
  }

  package static func softmax(_ l: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, _ n: Int) {
    let m = maxOf(l, n)
    var sum: Float = 0
    for i in 0..<n { out[i] = expf(l[i] - m); sum += out[i] }
    let inv = 1 / sum
    for i in 0..<n { out[i] *= inv }
  }

  static func maxOf(_ l: UnsafePointer<Float>, _ n: Int) -> Float {
    var m = -Float.infinity
    for i in 0..<n where l[i] > m { m = l[i] }
    return m.isFinite ? m : (n > 0 ? l[0] : 0)
  }

  package static func logSumExp(_ l: UnsafePointer<Float>, _ n: Int) -> Float {
    let m = maxOf(l, n)
    var sum: Float = 0
    for i in 0..<n { sum += expf(l[i] - m) }
    return m + logf(sum)
  }
}
