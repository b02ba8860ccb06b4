// The locker dashboard: the list of locks at `/`, one lock's page at `/dashboard/lock/NAME`.
//
// Everything shown comes from the API with the browser's credentials. `refresh` fetches what
// the page shows; it runs when `/events` says the lock table changed, every second while that
// stream is missing or the server is unreachable, and every 10 s besides as a safety net. Data
// is put into the page with textContent and createElement only, never as markup.
"use strict";

(function () {
  const LOCK_PAGE = "/dashboard/lock/";
  const HISTORY_PAGE_SIZE = 50;
  const FAST_POLL_MS = 1000;
  const SLOW_POLL_MS = 10000;
  const EVENTS_RETRY_MS = 10000;

  const view = location.pathname.startsWith(LOCK_PAGE)
    ? { kind: "lock", name: decodeURIComponent(location.pathname.slice(LOCK_PAGE.length)) }
    : { kind: "list" };

  const $ = (id) => document.getElementById(id);

  // ---- talking to the server ----

  /** A fetch of the API: `{status, body}`; throws `Unreachable` when no answer came. */
  async function api(path, options) {
    let resp;
    try {
      resp = await fetch(absolute(path), {
        cache: "no-store",
        credentials: "same-origin",
        ...options,
        headers: {
          Accept: "application/json",
          // Marks a change as the dashboard's: the server refuses a browser's change without it,
          // which is what keeps another site from posting forms here with our credentials.
          "X-Locker-Client": "dashboard",
          ...(options && options.body ? { "Content-Type": "application/json" } : {}),
        },
      });
    } catch (e) {
      throw new Unreachable(e.message);
    }
    const text = await resp.text();
    let body;
    try {
      body = JSON.parse(text);
    } catch (e) {
      body = { error: text.trim() || resp.statusText };
    }
    return { status: resp.status, body, text };
  }

  class Unreachable extends Error {}

  /** `path` on this server. A page opened as http://user:pass@host/ has the credentials in
   * its base URL, and the browser refuses to fetch a URL that carries them; the origin never
   * does (the browser still sends the credentials it was given). */
  function absolute(path) {
    return new URL(path, location.origin).href;
  }

  function lockPath(name) {
    return "/lock/" + encodeURIComponent(name);
  }

  // ---- connection state: live, polling, unreachable ----

  const connection = {
    events: null,
    eventsLive: false,
    eventsTriedAt: 0,
    unreachableSince: null,
    unauthorized: false,
    timer: null,
  };

  function showConnection() {
    const banner = $("banner");
    if (connection.unreachableSince) {
      banner.textContent =
        "Cannot reach the locker server (no answer since " +
        clock(connection.unreachableSince) +
        "). Trying again every second; what you see may be out of date.";
      banner.hidden = false;
    } else if (connection.unauthorized) {
      banner.textContent =
        "The server asks for credentials again (401). Reload the page to log in.";
      banner.hidden = false;
    } else {
      banner.hidden = true;
      banner.textContent = "";
    }
    document.body.classList.toggle("stale", !banner.hidden);
    const status = $("connection");
    if (connection.unreachableSince) {
      status.textContent = "Offline";
      status.dataset.state = "offline";
    } else if (connection.eventsLive) {
      status.textContent = "Live";
      status.dataset.state = "live";
    } else {
      status.textContent = "Updating every second";
      status.dataset.state = "polling";
    }
    if (state.updatedAt) {
      status.title = "Last updated " + clock(state.updatedAt);
    }
  }

  function reached(ok) {
    if (ok) {
      connection.unreachableSince = null;
    } else if (!connection.unreachableSince) {
      connection.unreachableSince = new Date();
    }
    showConnection();
  }

  /** Listens to `/events`; falls back to polling when the stream is refused or missing. */
  function listen() {
    if (!window.EventSource || connection.events) return;
    connection.eventsTriedAt = Date.now();
    const source = new EventSource(absolute("/events"));
    connection.events = source;
    source.addEventListener("change", () => {
      connection.eventsLive = true;
      refresh();
    });
    source.onopen = () => {
      connection.eventsLive = true;
      showConnection();
    };
    source.onerror = () => {
      connection.eventsLive = false;
      if (source.readyState === EventSource.CLOSED) {
        // Refused (no such endpoint, 401, a restart's 503): poll, and try again later.
        source.close();
        connection.events = null;
      }
      // The browser reconnects by itself otherwise; a fetch tells whether the server is there.
      refresh();
    };
  }

  function schedule() {
    clearTimeout(connection.timer);
    const fast = !connection.eventsLive || connection.unreachableSince;
    connection.timer = setTimeout(refresh, fast ? FAST_POLL_MS : SLOW_POLL_MS);
  }

  // ---- refreshing what the page shows ----

  const state = { locks: null, lock: null, history: [], historyEnd: false, updatedAt: null };
  let inFlight = null;
  let again = false;

  /** Fetches what the page shows and draws it; calls made meanwhile run once afterwards. */
  function refresh() {
    if (inFlight) {
      again = true;
      return inFlight;
    }
    inFlight = (view.kind === "lock" ? refreshLock() : refreshList())
      .then(
        () => {
          connection.unauthorized = false;
          state.updatedAt = new Date();
          reached(true);
          refreshConcourse();
          if (!connection.events && Date.now() - connection.eventsTriedAt > EVENTS_RETRY_MS) {
            listen();
          }
        },
        (e) => {
          if (e instanceof Unreachable) {
            reached(false);
          } else if (e instanceof Unauthorized) {
            connection.unauthorized = true;
            reached(true);
          } else {
            reached(true);
            console.error(e);
          }
        }
      )
      .finally(() => {
        inFlight = null;
        schedule();
        if (again) {
          again = false;
          refresh();
        }
      });
    return inFlight;
  }

  /** Says so while the server cannot ask Concourse about the builds that hold claims. */
  async function refreshConcourse() {
    const notice = $("concourse");
    let outage = null;
    let url = "";
    try {
      const answer = await get("/concourse");
      outage = answer.body.outage;
      url = answer.body.url || "";
    } catch (e) {
      return; // the main refresh says what is wrong with the server
    }
    if (outage) {
      notice.textContent =
        "Concourse (" + url + ") gives no answer to rely on since " +
        new Date(outage.since).toLocaleTimeString() + ": " + outage.error +
        ". Claims held for their build are kept until it answers.";
      notice.hidden = false;
    } else {
      notice.hidden = true;
      notice.textContent = "";
    }
  }

  class Unauthorized extends Error {}

  async function get(path) {
    const answer = await api(path);
    if (answer.status === 401) throw new Unauthorized();
    if (answer.status !== 200) {
      throw new Error(path + ": " + answer.status + " " + (answer.body.error || ""));
    }
    return answer;
  }

  let lastListText = null;

  async function refreshList() {
    const answer = await get("/locks");
    if (answer.text === lastListText) return;
    lastListText = answer.text;
    state.locks = answer.body;
    drawList();
  }

  let lastLockText = null;

  async function refreshLock() {
    const [lock, history] = await Promise.all([
      get(lockPath(view.name)),
      get(lockPath(view.name) + "/history?limit=" + HISTORY_PAGE_SIZE),
    ]);
    if (lock.text !== lastLockText) {
      lastLockText = lock.text;
      state.lock = lock.body;
      drawLock();
    }
    mergeHistory(history.body, state.history.length === 0);
  }

  /** Adds the newest page of history in front of what is shown, keeping older pages loaded;
   * when more changed than a page holds, starts again from the newest page (no gap shown). */
  function mergeHistory(newest, first) {
    const known = state.history.length ? state.history[0].id : -1;
    const fresh = newest.filter((e) => e.id > known);
    if (first || fresh.length === HISTORY_PAGE_SIZE) {
      state.history = newest;
      state.historyEnd = newest.length < HISTORY_PAGE_SIZE;
    } else if (fresh.length > 0) {
      state.history = fresh.concat(state.history);
    } else {
      return;
    }
    drawHistory();
  }

  async function loadOlderHistory() {
    const last = state.history[state.history.length - 1];
    if (!last) return;
    const button = $("history-older");
    button.disabled = true;
    try {
      const answer = await get(
        lockPath(view.name) + "/history?limit=" + HISTORY_PAGE_SIZE + "&before=" + last.id
      );
      state.history = state.history.concat(answer.body);
      state.historyEnd = answer.body.length < HISTORY_PAGE_SIZE;
      drawHistory();
    } catch (e) {
      if (e instanceof Unreachable) reached(false);
    } finally {
      button.disabled = false;
    }
  }

  // ---- drawing ----

  /** An element with attributes (`text` sets textContent) and children. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** Replaces `parent`'s children, keeping the keyboard focus on the element with the same
   * `data-focus` if it had it, so a refresh does not throw a keyboard user back to the top. */
  function replaceKeepingFocus(parent, children) {
    const active = document.activeElement;
    const key = active && parent.contains(active) ? active.dataset.focus : null;
    parent.replaceChildren(...children);
    if (key) {
      const again = parent.querySelector('[data-focus="' + CSS.escape(key) + '"]');
      if (again) again.focus();
    }
  }

  function isHeld(lock) {
    return lock.holders ? lock.holders.length > 0 : Object.keys(lock.locked_by || {}).length > 0;
  }

  function stateBadge(lock) {
    return isHeld(lock)
      ? el("span", { class: "badge held", text: "held" })
      : el("span", { class: "badge free", text: "free" });
  }

  /** A time of day, to the second. */
  function clock(date) {
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  /** When `iso` is: the time of day, with the date when it is not today. */
  function when(iso) {
    const date = new Date(iso);
    const today = new Date().toDateString() === date.toDateString();
    return today
      ? clock(date)
      : date.toLocaleDateString([], { year: "numeric", month: "short", day: "numeric" }) +
          " " +
          date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function timeEl(iso, relative) {
    if (!iso) return el("span", { class: "muted", text: "unknown" });
    const node = el("time", { datetime: iso, title: iso });
    node.dataset.relative = relative;
    setTimeText(node);
    return node;
  }

  function setTimeText(node) {
    const iso = node.getAttribute("datetime");
    node.textContent = when(iso) + " (" + ago(new Date(iso)) + ")";
  }

  function ago(date) {
    const seconds = Math.round((date.getTime() - Date.now()) / 1000);
    const abs = Math.abs(seconds);
    let amount;
    if (abs < 5) return "just now";
    if (abs < 90) amount = abs + " s";
    else if (abs < 90 * 60) amount = Math.round(abs / 60) + " min";
    else if (abs < 36 * 3600) amount = Math.round(abs / 3600) + " h";
    else amount = Math.round(abs / 86400) + " days";
    return seconds < 0 ? amount + " ago" : "in " + amount;
  }

  /** A safe link target: only http and https, never javascript: or data: from an owner. */
  function httpUrl(text) {
    try {
      const url = new URL(text);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch (e) {
      return null;
    }
  }

  /** Who a claim is for, from its owner: the build (a link when it has build_url), or the
   * person and note of a reservation. */
  function ownerView(owner, focusKey) {
    owner = owner || {};
    if (owner.reserved_by) {
      return el(
        "span",
        { class: "owner reserved" },
        "reserved by ",
        el("strong", { text: owner.reserved_by }),
        owner.note ? ": " + owner.note : ""
      );
    }
    const parts = [owner.team, owner.pipeline, owner.job].filter(Boolean);
    let label = parts.join("/");
    if (owner.build) label = (label ? label + " " : "build ") + "#" + owner.build;
    const url = owner.build_url ? httpUrl(owner.build_url) : null;
    if (url) {
      return el("a", {
        class: "owner build",
        href: url,
        rel: "noopener noreferrer",
        dataset: focusKey ? { focus: focusKey } : undefined,
        text: label || url,
      });
    }
    if (label) return el("span", { class: "owner build", text: label });
    if (owner.note) return el("span", { class: "owner", text: owner.note });
    return null;
  }

  function holderView(holder, lockName) {
    return el(
      "li",
      { class: "holder" },
      el("span", { class: "who", text: holder.requestor }),
      holder.count > 1 ? el("span", { class: "count", text: " ×" + holder.count }) : null,
      el("span", { class: "build" }, ownerView(holder.owner, "build:" + lockName + ":" + holder.requestor)),
      el("span", { class: "since" }, "since ", timeEl(holder.since, "since")),
      el(
        "span",
        { class: "lease" },
        holder.expires_at
          ? ["lease ends ", timeEl(holder.expires_at, "until")]
          : el("span", { class: "muted", text: "no lease" })
      ),
      holder.hold === "build"
        ? el(
            "span",
            { class: "hold" },
            "held while its build runs",
            holder.build_status ? " (Concourse last said: " + holder.build_status + ")" : ""
          )
        : null
    );
  }

  function waiterView(waiter) {
    return el(
      "li",
      { class: "waiter" },
      el("span", { class: "who", text: waiter.requestor }),
      " with key ",
      el("code", { text: waiter.key }),
      el("span", { class: "build" }, ownerView(waiter.owner)),
      el("span", { class: "since" }, "waiting since ", timeEl(waiter.since, "since"))
    );
  }

  function holdersList(lock) {
    const holders = lock.holders || [];
    if (holders.length === 0) return el("span", { class: "muted", text: "—" });
    return el("ul", { class: "holders" }, holders.map((h) => holderView(h, lock.name)));
  }

  function queueList(queue) {
    if (!queue || queue.length === 0) return el("span", { class: "muted", text: "nobody waits" });
    return el("ol", { class: "queue" }, queue.map(waiterView));
  }

  function cell(label, ...children) {
    return el("td", { "data-label": label }, ...children);
  }

  /** A cell with nothing to say ("—"), which a phone-width card leaves out. */
  function noneCell(label) {
    return el("td", { "data-label": label, class: "none" }, el("span", { class: "muted", text: "—" }));
  }

  // The list of locks.

  function filters() {
    return {
      name: $("filter-name").value.trim().toLowerCase(),
      heldOnly: $("filter-held").checked,
    };
  }

  function drawList() {
    if (!state.locks) return;
    const { name, heldOnly } = filters();
    const names = Object.keys(state.locks).sort((a, b) => a.localeCompare(b));
    const shown = names.filter((n) => {
      const lock = state.locks[n];
      return (!name || n.toLowerCase().includes(name)) && (!heldOnly || isHeld(lock));
    });
    const rows = shown.map((n) => {
      const lock = { ...state.locks[n], name: n };
      return el(
        "tr",
        { class: isHeld(lock) ? "held" : "free", dataset: { lock: n } },
        el(
          "th",
          { scope: "row", "data-label": "Lock" },
          el("a", {
            class: "lock-name",
            href: LOCK_PAGE + encodeURIComponent(n),
            dataset: { focus: "lock:" + n },
            text: n,
          })
        ),
        cell("State", stateBadge(lock)),
        lock.key ? cell("Key", el("code", { text: lock.key })) : noneCell("Key"),
        isHeld(lock) ? cell("Holders", holdersList(lock)) : noneCell("Holders"),
        lock.token === null || lock.token === undefined ? noneCell("Token") : cell("Token", String(lock.token)),
        cell("Queue", queueList(lock.queue))
      );
    });
    replaceKeepingFocus($("locks-body"), rows);
    $("locks").hidden = rows.length === 0;
    const empty = $("locks-empty");
    empty.hidden = rows.length > 0;
    empty.textContent =
      names.length === 0
        ? "No locks yet: a lock appears here once a pipeline or client takes it."
        : "No lock matches the filter.";
    const held = names.filter((n) => isHeld(state.locks[n])).length;
    const locks = names.length === 1 ? " lock" : " locks";
    $("list-count").textContent =
      shown.length === names.length
        ? names.length + locks + ", " + held + " held"
        : "Showing " + shown.length + " of " + names.length + locks + " (" + held + " held)";
  }

  function readFiltersFromUrl() {
    const params = new URLSearchParams(location.search);
    $("filter-name").value = params.get("q") || "";
    $("filter-held").checked = params.get("held") === "1";
  }

  function writeFiltersToUrl() {
    const { heldOnly } = filters();
    const params = new URLSearchParams();
    const q = $("filter-name").value;
    if (q) params.set("q", q);
    if (heldOnly) params.set("held", "1");
    const search = params.toString();
    history.replaceState(null, "", location.pathname + (search ? "?" + search : ""));
  }

  // One lock's page.

  function drawLock() {
    const lock = { ...state.lock, name: view.name };
    const summary = el(
      "dl",
      { class: "summary" },
      el("div", {}, el("dt", { text: "State" }), el("dd", {}, stateBadge(lock))),
      el(
        "div",
        {},
        el("dt", { text: "Key" }),
        el("dd", {}, lock.key ? el("code", { text: lock.key }) : el("span", { class: "muted", text: "—" }))
      ),
      el("div", {}, el("dt", { text: "Token" }), el("dd", { text: lock.token === null ? "—" : String(lock.token) })),
      el("div", {}, el("dt", { text: "Revision" }), el("dd", { text: String(lock.revision) })),
      el(
        "div",
        {},
        el("dt", { text: "Taken" }),
        el("dd", {}, lock.locked_at ? timeEl(lock.locked_at, "since") : el("span", { class: "muted", text: "—" }))
      )
    );
    $("lock-summary").replaceChildren(summary);
    replaceKeepingFocus($("lock-holders"), [
      isHeld(lock) ? holdersList(lock) : el("p", { class: "muted", text: "Nobody holds this lock." }),
    ]);
    $("lock-queue").replaceChildren(queueList(lock.queue));
    document.title = view.name + " · locker";
  }

  function drawHistory() {
    const rows = state.history.map((e) =>
      el(
        "tr",
        { class: "op-" + e.op, dataset: { id: String(e.id) } },
        cell("When", timeEl(e.time, "since")),
        cell("What", el("span", { class: "op", text: e.op })),
        cell("Who", e.requestor),
        cell("Key", e.key ? el("code", { text: e.key }) : ""),
        cell("Token", e.token === null ? "—" : String(e.token)),
        cell("Revision", String(e.revision)),
        cell("Reason", e.reason ? el("span", { class: "reason", text: e.reason }) : ""),
        cell("Owner", ownerView(e.owner)),
        cell("Client", e.client || el("span", { class: "muted", text: "server" }))
      )
    );
    replaceKeepingFocus($("history-body"), rows);
    $("history").hidden = rows.length === 0;
    $("history-empty").hidden = rows.length > 0;
    $("history-older").hidden = state.historyEnd || rows.length === 0;
  }

  function tick() {
    for (const node of document.querySelectorAll("time[data-relative]")) setTimeText(node);
  }

  // ---- actions ----

  const BY_KEY = "locker.by";

  function rememberBy(value) {
    try {
      if (value) localStorage.setItem(BY_KEY, value);
    } catch (e) {
      // Storage refused (private mode): the name is simply not remembered.
    }
  }

  function rememberedBy() {
    try {
      return localStorage.getItem(BY_KEY) || "";
    } catch (e) {
      return "";
    }
  }

  function outcome(form, ok, message) {
    const node = form.querySelector(".outcome");
    node.textContent = message;
    node.className = "outcome " + (ok ? "ok" : "failed");
  }

  /** Sends an action; shows the server's message either way. */
  async function act(form, path, body) {
    const buttons = form.querySelectorAll("button");
    buttons.forEach((b) => (b.disabled = true));
    outcome(form, true, "Sending…");
    try {
      const answer = await api(path, { method: "POST", body: JSON.stringify(body) });
      if (answer.status === 200) {
        outcome(form, true, answer.body.response || "Done.");
        refresh();
        return true;
      }
      outcome(form, false, "Refused (" + answer.status + "): " + (answer.body.error || answer.text));
    } catch (e) {
      outcome(form, false, "The server could not be reached; nothing was sent. Try again when it is back.");
      reached(false);
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
    return false;
  }

  function setUpForceRelease() {
    const form = $("force-release");
    const confirmBox = form.querySelector(".confirm");
    const ask = form.querySelector('[data-step="ask"]');
    const reason = $("force-release-reason");
    const by = $("force-release-by");
    by.value = rememberedBy();

    function cancel() {
      confirmBox.hidden = true;
      ask.hidden = false;
    }

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const why = reason.value.trim();
      if (!why) {
        outcome(form, false, "Say why: a reason is required, and it goes into the history.");
        reason.focus();
        return;
      }
      if (confirmBox.hidden) {
        const holders = (state.lock && state.lock.holders) || [];
        const who = holders.map((h) => h.requestor).join(", ");
        confirmBox.querySelector(".confirm-text").textContent =
          "Release every claim on '" +
          view.name +
          "'" +
          (who ? " (held by " + who + ")" : " (nobody holds it now)") +
          ", because: " +
          why +
          "?";
        confirmBox.hidden = false;
        ask.hidden = true;
        outcome(form, true, "");
        confirmBox.querySelector('[data-step="confirm"]').focus();
        return;
      }
      rememberBy(by.value.trim());
      const body = { reason: why };
      if (by.value.trim()) body.by = by.value.trim();
      const done = await act(form, lockPath(view.name) + "/force-release", body);
      cancel();
      if (done) reason.value = "";
      ask.focus();
    });
    form.querySelector('[data-step="cancel"]').addEventListener("click", () => {
      cancel();
      outcome(form, true, "Cancelled; nothing was sent.");
      ask.focus();
    });
  }

  function setUpReserve() {
    const form = $("reserve");
    const by = $("reserve-by");
    const note = $("reserve-note");
    const ttl = $("reserve-ttl");
    by.value = rememberedBy();
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      for (const input of [note, ttl]) {
        if (!input.value.trim()) {
          const label = form.querySelector('label[for="' + input.id + '"]');
          outcome(form, false, label.firstChild.textContent.trim() + " is required.");
          input.focus();
          return;
        }
      }
      rememberBy(by.value.trim());
      const body = { note: note.value.trim(), ttl: ttl.value.trim() };
      if (by.value.trim()) body.by = by.value.trim();
      const done = await act(form, lockPath(view.name) + "/reserve", body);
      if (done) note.value = "";
    });
  }

  // ---- start ----

  function start() {
    if (view.kind === "lock") {
      $("lock-view").hidden = false;
      $("lock-title").textContent = view.name;
      document.title = view.name + " · locker";
      setUpForceRelease();
      setUpReserve();
      $("history-older").addEventListener("click", loadOlderHistory);
    } else {
      $("list-view").hidden = false;
      readFiltersFromUrl();
      const redraw = () => {
        writeFiltersToUrl();
        drawList();
      };
      $("filter-name").addEventListener("input", redraw);
      $("filter-held").addEventListener("change", redraw);
      $("list-filter").addEventListener("submit", (event) => event.preventDefault());
    }
    showConnection();
    listen();
    refresh();
    setInterval(tick, 15000);
  }

  start();
})();
