// A 2-D scatter plot on a canvas: wheel to zoom, drag to pan, hover for a tooltip, shift-drag (or the Select
// button) to select a rectangle. Canvas rather than SVG so that a map of 100k tracks stays smooth.
import { html } from "./ui.js";

const PAD = 28;
const HIT_PX = 9;

export class Scatter {
  /* points: [{x, y, colour, r, shape: "dot" | "cross" | "diamond" | "star", text, item}]; tooltip(p) -> html;
     onSelect(points) is called after a rectangle selection (selectable points only: those with `item`). */
  constructor(container, { tooltip, onSelect } = {}) {
    this.container = container;
    this.tooltipOf = tooltip;
    this.onSelect = onSelect;
    container.classList.add("plot");
    container.innerHTML = html`<canvas></canvas><div class="plot-tools">
      ${onSelect ? html`<button type="button" data-select title="Or hold Shift and drag">Select</button>` : ""}
      <button type="button" data-reset>Reset view</button></div>`;
    container.plot = this; // for the browser tests: screenOf(i)
    this.canvas = container.querySelector("canvas");
    this.ctx = this.canvas.getContext("2d");
    this.tip = document.getElementById("tooltip");
    this.points = [];
    this.selected = new Set();
    this.selectMode = false;
    this.resetView();
    container.querySelector("[data-reset]").addEventListener("click", () => { this.resetView(); this.draw(); });
    container.querySelector("[data-select]")?.addEventListener("click", (ev) => {
      this.selectMode = !this.selectMode;
      ev.currentTarget.classList.toggle("on", this.selectMode);
      this.canvas.classList.toggle("selecting", this.selectMode);
    });
    this.canvas.addEventListener("wheel", (ev) => this.wheel(ev), { passive: false });
    this.canvas.addEventListener("pointerdown", (ev) => this.down(ev));
    this.canvas.addEventListener("pointermove", (ev) => this.move(ev));
    this.canvas.addEventListener("pointerup", (ev) => this.up(ev));
    this.canvas.addEventListener("pointerleave", () => { this.hideTip(); this.hover = -1; this.draw(); });
    new ResizeObserver(() => this.resize()).observe(container);
  }

  setPoints(points) {
    this.points = points;
    this.selected.clear();
    this.hover = -1;
    const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
    this.bounds = points.length
      ? { x0: Math.min(...xs), x1: Math.max(...xs), y0: Math.min(...ys), y1: Math.max(...ys) }
      : { x0: -1, x1: 1, y0: -1, y1: 1 };
    this.resetView();
    this.resize();
  }

  resetView() { this.view = { scale: 1, tx: 0, ty: 0 }; }

  resize() {
    const r = this.container.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    this.w = r.width; this.h = r.height;
    this.canvas.width = Math.round(r.width * dpr);
    this.canvas.height = Math.round(r.height * dpr);
    this.ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    this.draw();
  }

  // data -> canvas pixels: fit the bounds with one scale for both axes (distances mean the same either way), y up
  project() {
    const b = this.bounds || { x0: -1, x1: 1, y0: -1, y1: 1 };
    const dx = Math.max(b.x1 - b.x0, 1e-9), dy = Math.max(b.y1 - b.y0, 1e-9);
    const s = Math.min((this.w - 2 * PAD) / dx, (this.h - 2 * PAD) / dy) * this.view.scale;
    const cx = this.w / 2 + this.view.tx, cy = this.h / 2 + this.view.ty;
    const mx = (b.x0 + b.x1) / 2, my = (b.y0 + b.y1) / 2;
    this.xy = new Float32Array(this.points.length * 2);
    this.points.forEach((p, i) => {
      this.xy[2 * i] = cx + (p.x - mx) * s;
      this.xy[2 * i + 1] = cy - (p.y - my) * s;
    });
  }

  // where point i is on the screen (client coordinates)
  screenOf(i) {
    const r = this.canvas.getBoundingClientRect();
    return { x: r.left + this.xy[2 * i], y: r.top + this.xy[2 * i + 1] };
  }

  draw() {
    if (!this.w) return;
    const { ctx } = this;
    ctx.clearRect(0, 0, this.w, this.h);
    this.project();
    this.points.forEach((p, i) => this.mark(p, this.xy[2 * i], this.xy[2 * i + 1], this.selected.has(i), i === this.hover));
    if (this.rect) {
      const { x0, y0, x1, y1 } = this.rect;
      ctx.fillStyle = "rgba(79,70,229,.08)";
      ctx.strokeStyle = "#4f46e5";
      ctx.setLineDash([4, 3]);
      ctx.fillRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
      ctx.strokeRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
      ctx.setLineDash([]);
    }
  }

  mark(p, x, y, selected, hover) {
    const { ctx } = this;
    const r = (p.r || 4) * (hover ? 1.6 : 1);
    ctx.fillStyle = p.colour || "#4f46e5";
    ctx.strokeStyle = p.colour || "#4f46e5";
    ctx.beginPath();
    if (p.shape === "cross") {
      ctx.lineWidth = 2;
      ctx.moveTo(x - r, y - r); ctx.lineTo(x + r, y + r);
      ctx.moveTo(x + r, y - r); ctx.lineTo(x - r, y + r);
      ctx.stroke();
    } else if (p.shape === "diamond") {
      ctx.moveTo(x, y - r * 1.3); ctx.lineTo(x + r * 1.3, y); ctx.lineTo(x, y + r * 1.3); ctx.lineTo(x - r * 1.3, y);
      ctx.closePath(); ctx.fill();
    } else if (p.shape === "star") {
      for (let k = 0; k < 10; k++) {
        const a = (Math.PI / 5) * k - Math.PI / 2, rr = k % 2 ? r * 0.5 : r * 1.4;
        ctx.lineTo(x + rr * Math.cos(a), y + rr * Math.sin(a));
      }
      ctx.closePath(); ctx.fill();
      ctx.lineWidth = 1; ctx.strokeStyle = "#fff"; ctx.stroke();
    } else {
      ctx.globalAlpha = 0.85;
      ctx.arc(x, y, r, 0, 2 * Math.PI);
      ctx.fill();
      ctx.globalAlpha = 1;
    }
    if (selected || hover) {
      ctx.beginPath();
      ctx.lineWidth = 2;
      ctx.strokeStyle = "#161a2b";
      ctx.arc(x, y, r + 3, 0, 2 * Math.PI);
      ctx.stroke();
    }
    if (p.text) {
      ctx.font = "600 12px system-ui, 'DejaVu Sans', sans-serif";
      ctx.fillStyle = "#161a2b";
      ctx.fillText(p.text, x + r + 5, y + 4);
    }
  }

  local(ev) {
    const r = this.canvas.getBoundingClientRect();
    return { x: ev.clientX - r.left, y: ev.clientY - r.top };
  }

  nearest(x, y) {
    let best = -1, bestD = HIT_PX * HIT_PX;
    for (let i = 0; i < this.points.length; i++) {
      const dx = this.xy[2 * i] - x, dy = this.xy[2 * i + 1] - y, d = dx * dx + dy * dy;
      if (d <= bestD) { best = i; bestD = d; } // later points are drawn on top: they win ties
    }
    return best;
  }

  wheel(ev) {
    ev.preventDefault();
    const { x, y } = this.local(ev);
    const f = Math.exp(-ev.deltaY * 0.0015);
    const scale = Math.min(Math.max(this.view.scale * f, 0.5), 200);
    const g = scale / this.view.scale;
    const cx = this.w / 2, cy = this.h / 2;
    this.view = { scale, tx: x - cx - (x - cx - this.view.tx) * g, ty: y - cy - (y - cy - this.view.ty) * g };
    this.draw();
  }

  down(ev) {
    this.canvas.setPointerCapture(ev.pointerId);
    const { x, y } = this.local(ev);
    if (this.onSelect && (ev.shiftKey || this.selectMode)) {
      this.rect = { x0: x, y0: y, x1: x, y1: y };
    } else {
      this.drag = { x, y, tx: this.view.tx, ty: this.view.ty };
      this.canvas.classList.add("dragging");
    }
    this.hideTip();
  }

  move(ev) {
    const { x, y } = this.local(ev);
    if (this.rect) {
      Object.assign(this.rect, { x1: x, y1: y });
      this.draw();
    } else if (this.drag) {
      this.view.tx = this.drag.tx + x - this.drag.x;
      this.view.ty = this.drag.ty + y - this.drag.y;
      this.draw();
    } else {
      const i = this.nearest(x, y);
      if (i !== this.hover) { this.hover = i; this.draw(); }
      if (i >= 0 && this.tooltipOf) this.showTip(ev, this.tooltipOf(this.points[i]));
      else this.hideTip();
    }
  }

  up() {
    this.canvas.classList.remove("dragging");
    this.drag = null;
    if (!this.rect) return;
    const { x0, y0, x1, y1 } = this.rect;
    this.rect = null;
    const [a, b, c, d] = [Math.min(x0, x1), Math.max(x0, x1), Math.min(y0, y1), Math.max(y0, y1)];
    this.selected.clear();
    this.points.forEach((p, i) => {
      const px = this.xy[2 * i], py = this.xy[2 * i + 1];
      if (p.item && px >= a && px <= b && py >= c && py <= d) this.selected.add(i);
    });
    this.draw();
    this.onSelect([...this.selected].map((i) => this.points[i]));
  }

  showTip(ev, markup) {
    this.tip.innerHTML = markup;
    this.tip.hidden = false;
    const w = this.tip.offsetWidth;
    const left = ev.clientX + 14 + w > window.innerWidth ? ev.clientX - w - 14 : ev.clientX + 14;
    this.tip.style.left = `${left}px`;
    this.tip.style.top = `${ev.clientY + 14}px`;
  }

  hideTip() { this.tip.hidden = true; }
}
