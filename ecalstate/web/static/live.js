// ecalstate serve: keeps the page's live region (#live) current without a reload.
// Every data-interval ms it asks data-poll for the newest audit id; when that moved, it fetches this
// page again and swaps in the new #live region (the filter form and scroll position stay as they are).
"use strict";
(function () {
  const live = document.getElementById("live");
  const status = document.getElementById("live-status");
  if (!live || !live.dataset.poll) return;
  const interval = Number(live.dataset.interval) || 2000;
  let busy = false;

  function show(ok) {
    if (!status) return;
    status.textContent = ok ? "live" : "offline";
    status.classList.toggle("offline", !ok);
  }

  async function refresh() {
    const page = await fetch(window.location.href, { cache: "no-store" });
    if (!page.ok) throw new Error("page " + page.status);
    const doc = new DOMParser().parseFromString(await page.text(), "text/html");
    const fresh = doc.getElementById("live");
    if (!fresh) throw new Error("no live region");
    const open = new Set(Array.from(live.querySelectorAll("details[open]"), (d) => d.parentElement.id));
    const nodes = Array.from(fresh.childNodes);  // a copy: adopting a node takes it out of the live list
    live.replaceChildren(...nodes.map((n) => document.adoptNode(n)));
    live.querySelectorAll("details").forEach((d) => { if (open.has(d.parentElement.id)) d.open = true; });
    live.dataset.last = fresh.dataset.last;
  }

  async function tick() {
    if (busy) return;
    busy = true;
    try {
      const answer = await fetch(live.dataset.poll, { cache: "no-store" });
      if (!answer.ok) throw new Error("poll " + answer.status);
      const data = await answer.json();
      if (String(data.last) !== live.dataset.last) await refresh();
      show(true);
    } catch (err) {
      show(false);
    } finally {
      busy = false;
    }
  }

  window.setInterval(tick, interval);
})();
