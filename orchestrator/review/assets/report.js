// airlock review: navigation between tasks, index sorting, the unified/side-by-side toggle and
// expanding outputs. It only moves and clones nodes the report already has: it never turns text
// into HTML. The URL fragment holds the state, so a view can be shared or reloaded:
//   #<element id>&view=split|unified&sort=<column>:asc|desc
document.documentElement.classList.add("js");
document.addEventListener("DOMContentLoaded", function () {
  "use strict";
  var doc = document, body = doc.body;
  var runs = Array.prototype.slice.call(doc.querySelectorAll("section.run"));
  var table = doc.getElementById("runs-table");
  var baseTitle = doc.title;
  var VIEW_KEY = "airlock-review-view";

  function parseHash() {
    var raw = location.hash.slice(1), state = { target: "", opts: {} };
    try { raw = decodeURIComponent(raw); } catch (e) { /* keep it as it is */ }
    raw.split("&").forEach(function (part, i) {
      var eq = part.indexOf("=");
      if (eq > 0) state.opts[part.slice(0, eq)] = part.slice(eq + 1);
      else if (i === 0) state.target = part;
    });
    return state;
  }

  // ---- sorting the index
  function cellValue(row, col) {
    var v = row.cells[col] ? row.cells[col].getAttribute("data-v") : "";
    var n = parseFloat(v);
    return isNaN(n) ? (v || "") : n;
  }
  function sortBy(key, dir) {
    if (!table) return;
    var th = null;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) {
      if (cell.getAttribute("data-key") === key) th = cell; else cell.removeAttribute("aria-sort");
    });
    if (!th) return;
    dir = dir === "desc" ? "desc" : "asc";
    var col = th.cellIndex, tbody = table.tBodies[0];
    var rows = Array.prototype.slice.call(tbody.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, col), y = cellValue(b, col), c;
      if (typeof x === "number" && typeof y === "number") c = x - y;
      else c = String(x).localeCompare(String(y));
      if (dir === "desc") c = -c;
      return c || (+a.getAttribute("data-pos") - +b.getAttribute("data-pos"));
    });
    rows.forEach(function (row) { tbody.appendChild(row); });
    th.setAttribute("aria-sort", dir === "asc" ? "ascending" : "descending");
    table.setAttribute("data-sort", key + ":" + dir);
  }
  if (table) {
    table.tHead.addEventListener("click", function (event) {
      var th = event.target.closest("th[data-key]");
      if (!th) return;
      var first = th.getAttribute("data-first") || "asc";
      var now = th.getAttribute("aria-sort");
      sortBy(th.getAttribute("data-key"), now ? (now === "ascending" ? "desc" : "asc") : first);
    });
    table.tBodies[0].addEventListener("click", function (event) {
      var row = event.target.closest("tr[data-href]");
      if (row && !event.target.closest("a")) location.hash = row.getAttribute("data-href");
    });
  }

  // ---- side-by-side view, built from the unified table on first use
  function sideCells(tr, row, kind, numberCell) {
    var ln = doc.createElement("td"), code;
    ln.className = "ln";
    if (row) {
      ln.setAttribute("data-n", row.cells[numberCell].getAttribute("data-n") || "");
      ln.classList.add(kind);
      code = row.cells[2].cloneNode(true);
      code.classList.add(kind);
    } else {
      ln.classList.add("empty");
      code = doc.createElement("td");
      code.className = "code empty";
    }
    tr.appendChild(ln);
    tr.appendChild(code);
  }
  function buildSplit(unified) {
    var split = doc.createElement("table"), tbody = doc.createElement("tbody");
    split.className = "diff split";
    var cols = doc.createElement("colgroup");
    ["lnc", "", "lnc", ""].forEach(function (cls) { var col = doc.createElement("col"); if (cls) col.className = cls; cols.appendChild(col); });
    split.appendChild(cols);
    split.appendChild(tbody);
    var dels = [], adds = [];
    function flush() {
      for (var i = 0; i < Math.max(dels.length, adds.length); i++) {
        var tr = doc.createElement("tr");
        sideCells(tr, dels[i], "del", 0);
        sideCells(tr, adds[i], "add", 1);
        tbody.appendChild(tr);
      }
      dels = []; adds = [];
    }
    Array.prototype.forEach.call(unified.tBodies[0].rows, function (row) {
      var kind = row.className;
      if (kind === "del") { dels.push(row); return; }
      if (kind === "add") { adds.push(row); return; }
      flush();
      var tr = doc.createElement("tr");
      if (kind === "ctx") {
        sideCells(tr, row, "ctx", 0);
        sideCells(tr, row, "ctx", 1);
      } else {  // hunk header, "no newline", "more lines", raw: one cell across
        tr.className = kind;
        var cell = row.cells[row.cells.length - 1].cloneNode(true);
        cell.colSpan = 4;
        tr.appendChild(cell);
      }
      tbody.appendChild(tr);
    });
    flush();
    unified.parentNode.insertBefore(split, unified.nextSibling);
  }
  function ensureSplit(scope) {
    Array.prototype.forEach.call(scope.querySelectorAll("table.diff.unified"), function (unified) {
      var next = unified.nextElementSibling;
      if (!next || !next.classList.contains("split")) buildSplit(unified);
    });
  }
  function currentRun() {
    for (var i = 0; i < runs.length; i++) if (runs[i].classList.contains("current")) return runs[i];
    return null;
  }
  function setView(view, remember) {
    view = view === "split" ? "split" : "unified";
    if (view === "split") ensureSplit(currentRun() || doc);
    body.setAttribute("data-view", view);
    Array.prototype.forEach.call(doc.querySelectorAll("[data-action^='view-']"), function (button) {
      button.setAttribute("aria-pressed", button.getAttribute("data-action") === "view-" + view ? "true" : "false");
    });
    if (remember) { try { localStorage.setItem(VIEW_KEY, view); } catch (e) { /* file:// may refuse */ } }
  }

  // ---- navigation
  function route() {
    var state = parseHash();
    var el = state.target ? doc.getElementById(state.target) : null;
    var run = el ? el.closest("section.run") : null;
    if (!run && !state.target && runs.length === 1) run = runs[0];  // a single run's report opens on it
    runs.forEach(function (r) { r.classList.toggle("current", r === run); });
    body.classList.toggle("viewing-run", !!run);
    doc.title = run ? run.getAttribute("data-title") + " · " + baseTitle : baseTitle;
    if (state.opts.sort) { var s = state.opts.sort.split(":"); sortBy(s[0], s[1]); }
    setView(state.opts.view || body.getAttribute("data-view"), !!state.opts.view);
    if (el && run && el !== run) {
      for (var p = el; p; p = p.parentElement) if (p.tagName === "DETAILS") p.open = true;
      el.scrollIntoView();
    } else {
      window.scrollTo(0, 0);
    }
  }
  function step(delta) {
    var run = currentRun(), i = run ? runs.indexOf(run) + delta : (delta > 0 ? 0 : runs.length - 1);
    if (i >= 0 && i < runs.length) location.hash = runs[i].id;
  }

  doc.addEventListener("click", function (event) {
    var button = event.target.closest("[data-action]");
    if (!button) return;
    var action = button.getAttribute("data-action"), scope = button.closest("section.run") || doc;
    if (action === "view-split" || action === "view-unified") setView(action.slice(5), true);
    else if (action === "expand" || action === "collapse") {
      Array.prototype.forEach.call(scope.querySelectorAll("ol.timeline details"), function (d) { d.open = action === "expand"; });
    }
  });
  doc.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || /INPUT|TEXTAREA|SELECT/.test(event.target.tagName)) return;
    if (event.key === "j") step(1);
    else if (event.key === "k") step(-1);
    else if (event.key === "Escape" && currentRun()) location.hash = "index";
  });
  window.addEventListener("hashchange", route);

  var saved = null;
  try { saved = localStorage.getItem(VIEW_KEY); } catch (e) { /* no storage */ }
  body.setAttribute("data-view", saved === "split" ? "split" : "unified");
  route();
  // The browser jumps to the fragment's element once the page has loaded; a task page starts at the top.
  window.addEventListener("load", function () {
    var state = parseHash(), el = state.target && doc.getElementById(state.target);
    if (!el || el.tagName === "SECTION") window.scrollTo(0, 0);
  });
  body.setAttribute("data-ready", "1");  // tests read this from the DOM: the script ran to the end
});
