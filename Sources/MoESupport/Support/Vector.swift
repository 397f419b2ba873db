// Element-wise kernels on SIMD16<Float>: exp, SiLU, SwiGLU forward and backward,
// bf16 widening, dot products. Each has a scalar reference beside it; tests
// compare the two.

#if canImport(Glibc)
import Glibc
#endif

public typealias Vec16 = SIMD16<Float>

// MARK: - exp

/// Lane-wise maximum; a NaN lane of `b` is skipped (the generic pointwiseMax
/// handles NaN with a scalar loop that the compiler may leave out of line).
@inlinable @inline(always)
package func max16(_ a: Vec16, _ b: Vec16) -> Vec16 { a.replacing(with: b, where: b .> a) }

/// e^x for 16 lanes: Cody-Waite range reduction and a degree-6 polynomial
/// (relative error below 2e-7 over the clamped range). Inputs are clamped to
/// [-87.3, 88.3] (NaN to the lower bound), so the result is always finite and positive.
@inlinable @inline(always)
package func exp16(_ x: Vec16) -> Vec16 {
  let lower = Vec16(repeating: -87.3), upper = Vec16(repeating: 88.3)
  let xc = lower.replacing(with: x.replacing(with: upper, where: x .> upper), where: x .>= lower)
  // t = x*log2(e) + 1.5*2^23: the addition rounds to the nearest integer n, kept in t's low bits.
  let magic = Vec16(repeating: 12582912.0)
  let t = magic.addingProduct(xc, Vec16(repeating: 1.44269504088896341))
  let n = t - magic
  var r = xc.addingProduct(n, Vec16(repeating: -0.693359375))
  r = r.addingProduct(n, Vec16(repeating: 2.12194440e-4))
  var p = Vec16(repeating: 1.9875691500e-4)
  p = Vec16(repeating: 1.3981999507e-3).addingProduct(p, r)
  p = Vec16(repeating: 8.3334519073e-3).addingProduct(p, r)
  p = Vec16(repeating: 4.1665795894e-2).addingProduct(p, r)
  p = Vec16(repeating: 1.6666665459e-1).addingProduct(p, r)
  p = Vec16(repeating: 5.0000001201e-1).addingProduct(p, r)
  let r2 = r * r
  let e = (r + 1).addingProduct(p, r2)
  // 2^n from the integer in t's mantissa: bits(t) = 0x4B400000 + n.
  let bits = unsafeBitCast(t, to: SIMD16<Int32>.self) &- 0x4B40_0000 &+ 127
  let pow2n = unsafeBitCast(bits &<< 23, to: Vec16.self)
  return e * pow2n
}

/// Logistic sigmoid 1 / (1 + e^-x), 16 lanes.
@inlinable @inline(always)
package func sigmoid16(_ x: Vec16) -> Vec16 {
  Vec16(repeating: 1) / (exp16(-x) + 1)
}

@inlinable @inline(always)
package func sigmoidScalar(_ x: Float) -> Float { 1 / (1 + expf(-x)) }

// MARK: - SwiGLU

/// a = silu(g) * u over `count` elements.
/// g, u, a: [count]; `a` may alias neither input.
@inlinable
package func swigluForward(gate g: UnsafePointer<Float>, up u: UnsafePointer<Float>,
                           out a: UnsafeMutablePointer<Float>, count: Int) {
  var i = 0
  while i + 16 <= count {
    let gv = load16(g + i), uv = load16(u + i)
    store16(gv * sigmoid16(gv) * uv, a + i)
    i += 16
  }
  while i < count {
    a[i] = g[i] * sigmoidScalar(g[i]) * u[i]
    i += 1
  }
}

/// Backward of a = silu(g) * u, written in place of the saved activations:
/// on entry g, u hold the forward inputs and da the gradient of a;
/// on exit g holds dL/dg and u holds dL/du.
@inlinable
package func swigluBackward(gate g: UnsafeMutablePointer<Float>, up u: UnsafeMutablePointer<Float>,
                            gradOut da: UnsafePointer<Float>, count: Int) {
  var i = 0
  while i + 16 <= count {
    let gv = load16(g + i), uv = load16(u + i), dav = load16(da + i)
    let s = sigmoid16(gv)
    let silu = gv * s
    // d silu / dg = s * (1 + g * (1 - s))
    let dsilu = s * (gv * (1 - s) + 1)
    store16(dav * uv * dsilu, g + i)
    store16(dav * silu, u + i)
    i += 16
  }
  while i < count {
    let s = sigmoidScalar(g[i])
    let silu = g[i] * s
    let dsilu = s * (1 + g[i] * (1 - s))
    let dg = da[i] * u[i] * dsilu
    u[i] = da[i] * silu
    g[i] = dg
    i += 1
  }
}

/// Scalar references of the two SwiGLU kernels (Double inside), used by tests.
public enum SwiGLUReference {
  public static func forward(_ g: Float, _ u: Float) -> Float {
    let gd = Double(g)
    return Float(gd / (1 + exp(-gd)) * Double(u))
  }
  public static func backward(_ g: Float, _ u: Float, _ da: Float) -> (dg: Float, du: Float) {
    let gd = Double(g), s = 1 / (1 + exp(-gd))
    return (Float(Double(da) * Double(u) * s * (1 + gd * (1 - s))), Float(Double(da) * gd * s))
  }
}


// MARK: - Loads, stores, reductions

/// The sum of v's lanes as a tree: halves added three times, then the last
/// two lanes (4 dependent adds). `Vec16.sum()` adds the lanes one after
/// another (15 dependent adds with a shuffle each), which dominates loops that
/// reduce a vector for every few loads, such as decode attention's scores.
@inlinable @inline(always)
package func treeSum(_ v: Vec16) -> Float {
  let eight = v.lowHalf + v.highHalf
  let four = eight.lowHalf + eight.highHalf
  let two = four.lowHalf + four.highHalf
  return two[0] + two[1]
}

@inlinable @inline(always)
package func load16(_ p: UnsafePointer<Float>) -> Vec16 {
  UnsafeRawPointer(p).loadUnaligned(as: Vec16.self)
}

@inlinable @inline(always)
package func load16(_ p: UnsafeMutablePointer<Float>) -> Vec16 {
  UnsafeRawPointer(p).loadUnaligned(as: Vec16.self)
}

@inlinable @inline(always)
package func store16(_ v: Vec16, _ p: UnsafeMutablePointer<Float>) {
  UnsafeMutableRawPointer(p).storeBytes(of: v, as: Vec16.self)
}

/// 16 bf16 values widened to f32 (a bf16 is the top half of an f32). Widened
/// a half at a time: the compiler turns each half into one zero-extending
/// load (vpmovzxwd), where the 16-lane conversion stays a call per vector.
@inlinable @inline(always)
package func loadBF16x16(_ p: UnsafePointer<UInt16>) -> Vec16 {
  let h = UnsafeRawPointer(p).loadUnaligned(as: SIMD16<UInt16>.self)
  let w = SIMD16<UInt32>(lowHalf: SIMD8<UInt32>(truncatingIfNeeded: h.lowHalf),
                         highHalf: SIMD8<UInt32>(truncatingIfNeeded: h.highHalf)) &<< 16
  return unsafeBitCast(w, to: Vec16.self)
}

/// Widens `count` bf16 values to f32.
@inlinable
package func widenBF16(_ src: UnsafePointer<UInt16>, _ dst: UnsafeMutablePointer<Float>, count: Int) {
  // A plain loop: the compiler vectorizes it into zero-extends and shifts
  // (the generic SIMD integer conversion is an out-of-line call).
  let out = UnsafeMutableRawPointer(dst).assumingMemoryBound(to: UInt32.self)
  for i in 0..<count { out[i] = UInt32(src[i]) &<< 16 }
}

/// Dot product of two f32 vectors of length n, in a fixed order.
@inlinable @inline(always)
package func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
  var acc = Vec16()
  var i = 0
  while i + 16 <= n {
    acc = acc.addingProduct(load16(a + i), load16(b + i))
    i += 16
  }
  var s = acc.sum()
  while i < n {
    s += a[i] * b[i]
    i += 1
  }
  return s
}

/// Sum over i of a[i] * b[i] * c[i] for three f32 vectors of length n, in the
/// order `dot` uses (sixteen partial sums added in lane order, then the tail).
@inlinable @inline(always)
package func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafePointer<Float>, _ n: Int) -> Float {
  var acc = Vec16()
  var i = 0
  while i + 16 <= n {
    acc = acc.addingProduct(load16(a + i) * load16(b + i), load16(c + i))
    i += 16
  }
  var s = acc.sum()
  while i < n {
    s += a[i] * b[i] * c[i]
    i += 1
  }
  return s
}

/// y[0..<n] += alpha * x[0..<n]
@inlinable @inline(always)
package func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
  let av = Vec16(repeating: alpha)
  var i = 0
  while i + 16 <= n {
    store16(load16(y + i).addingProduct(av, load16(x + i)), y + i)
    i += 16
  }
  while i < n {
    y[i] += alpha * x[i]
    i += 1
  }
}

// MARK: - Finiteness

/// The largest of `n` floats (n > 0) and whether all of them are finite, in one
/// pass: x - x is 0 for a finite x and NaN otherwise.
@inlinable @inline(always)
package func maxAndFinite(_ v: UnsafePointer<Float>, _ n: Int) -> (max: Float, finite: Bool) {
  var top = Vec16(repeating: -.infinity), acc = Vec16()
  var j = 0
  while j + 16 <= n {
    let x = load16(v + j)
    top = max16(top, x)
    acc += x - x
    j += 16
  }
  var m = top.max(), check = acc.sum()
  while j < n {
    m = max(m, v[j])
    check += v[j] - v[j]
    j += 1
  }
  return (m, check == 0)
}

/// Index of the first NaN or infinity among `n` floats; nil when all are finite.
/// x - x is 0 for a finite x and NaN otherwise, so one sum per block tells
/// whether the block needs a closer look.
@inlinable
package func firstNonFinite(_ p: UnsafePointer<Float>, _ n: Int) -> Int? {
  var block = 0
  while block < n {
    let end = min(n, block + 4096)
    var acc = Vec16()
    var i = block
    while i + 16 <= end {
      let x = load16(p + i)
      acc += x - x
      i += 16
    }
    var sum = acc.sum()
    while i < end {
      sum += p[i] - p[i]
      i += 1
    }
    if sum != 0 {
      for j in block..<end where !p[j].isFinite { return j }
    }
    block = end
  }
  return nil
}

/// Index of the first NaN or infinity among `n` bf16 values (all exponent
/// bits set); nil when all are finite.
@inlinable
package func firstNonFiniteBF16(_ p: UnsafePointer<UInt16>, _ n: Int) -> Int? {
  var block = 0
  while block < n {
    let end = min(n, block + 4096)
    var any: UInt16 = 0
    for i in block..<end { any |= (p[i] & 0x7F80) == 0x7F80 ? 1 : 0 }
    if any != 0 {
      for j in block..<end where (p[j] & 0x7F80) == 0x7F80 { return j }
    }
    block = end
  }
  return nil
}
