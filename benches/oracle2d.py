"""Oracle labels for a views2d simulation (issue 18): the best that classification against
the *true* views can do on this data, as the ceiling for benches/accuracy2d.sh.

Each good particle (gt/is_junk = 0) is compared with every true view (the simulator's
volumes/views.mrcs) times the particle's own CTF, over 72 in-plane angles (5°, bilinear
rotation about the box centre) and every integer shift within 5 px (cross-correlation by FFT);
the log-likelihood is that of white noise of variance 1 with the template at unit scale
(the simulator's noise model), maximised over poses; the label is the best view.
Prints "ARI accuracy" (ARI of the labels vs gt/view, fraction equal to gt/view).

Usage: python oracle2d.py DIR PSIZE_A   (DIR holds images.f4, the ctf_*.f4 dumps, view.i4,
is_junk.u4 written by accuracy2d.sh, and sim/volumes/views.mrcs)
"""
import sys

import mrcfile
import numpy as np

d, psize = sys.argv[1], float(sys.argv[2])
views = mrcfile.open(f"{d}/sim/volumes/views.mrcs").data.astype(np.float64)
n = views.shape[1]
images = np.fromfile(f"{d}/images.f4", "<f4").reshape(-1, n, n)
view = np.fromfile(f"{d}/view.i4", "<i4")
junk = np.fromfile(f"{d}/is_junk.u4", "<u4") > 0
ctf = {k: np.fromfile(f"{d}/ctf_{k}.f4", "<f4").astype(np.float64)
       for k in ("accel_kv", "amp_contrast", "cs_mm", "df1_A", "df2_A", "df_angle_rad")}


def rotate(img, a):
    c = n / 2
    y, x = np.mgrid[0:n, 0:n] - c
    xs, ys = np.cos(a) * x + np.sin(a) * y + c, -np.sin(a) * x + np.cos(a) * y + c
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    out = np.zeros_like(img)
    for dy in (0, 1):
        for dx in (0, 1):
            w = (xs - x0 if dx else 1 - xs + x0) * (ys - y0 if dy else 1 - ys + y0)
            xi, yi = x0 + dx, y0 + dy
            ok = (xi >= 0) & (xi < n) & (yi >= 0) & (yi < n)
            out[ok] += w[ok] * img[yi[ok], xi[ok]]
    return out


R = 72
spec = np.fft.rfft2(np.array([[rotate(v, 2 * np.pi * r / R) for r in range(R)] for v in views]))
ky = np.fft.fftfreq(n)[:, None] / psize
kx = np.fft.rfftfreq(n)[None, :] / psize
k2 = kx * kx + ky * ky
# each complex coefficient of the half plane counts twice in the full plane, except the
# columns kx = 0 and kx = Nyquist
mult = np.full(k2.shape, 2.0)
mult[:, 0] = mult[:, -1] = 1.0


def ctf_of(i):
    v = ctf["accel_kv"][i] * 1e3
    lam = 12.2643247 / np.sqrt(v * (1 + v * 0.978466e-6))
    a = ctf["amp_contrast"][i]
    dfm, dfd = (ctf["df1_A"][i] + ctf["df2_A"][i]) / 2, (ctf["df1_A"][i] - ctf["df2_A"][i]) / 2
    ang = ctf["df_angle_rad"][i]
    dfk2 = dfm * k2 + dfd * ((kx * kx - ky * ky) * np.cos(2 * ang) + 2 * kx * ky * np.sin(2 * ang))
    chi = np.pi * lam * dfk2 - np.pi / 2 * ctf["cs_mm"][i] * 1e7 * lam**3 * k2 * k2 \
        + np.arctan(a / np.sqrt(1 - a * a))
    return np.sin(chi)


yy, xx = np.mgrid[0:n, 0:n]
yy, xx = np.where(yy > n // 2, yy - n, yy), np.where(xx > n // 2, xx - n, xx)
window = yy**2 + xx**2 <= 25
good = np.where(~junk)[0]
labels = np.empty(len(good), int)
for j, i in enumerate(good):
    t = spec * ctf_of(i)
    cc = np.fft.irfft2(np.fft.rfft2(images[i])[None, None] * np.conj(t), s=(n, n))
    norm = (mult * np.abs(t) ** 2).sum(axis=(2, 3)) / (n * n)
    ll = cc[..., window] - norm[..., None] / 2
    labels[j] = ll.reshape(len(views), -1).max(1).argmax()


def ari(a, b):
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    t = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(t, (a, b), 1)
    c2 = lambda x: (x * (x - 1) / 2).sum()
    m = t.sum()
    idx, ea, eb = c2(t), c2(t.sum(1)), c2(t.sum(0))
    e = ea * eb / (m * (m - 1) / 2)
    return (idx - e) / ((ea + eb) / 2 - e)


print(f"{ari(labels, view[good]):.4f} {(labels == view[good]).mean():.4f}")
