// The dashboard's only script: live parts and confirmations. Pages work without it.
//  - An element with data-refresh="URL" has its content replaced by that URL's HTML every
//    data-every seconds (default 5), while the tab is visible: the URL answers a fragment.
//  - A form with data-confirm="question" asks before it posts.
"use strict";
(function () {
  function refresh(el) {
    if (document.hidden) return;
    fetch(el.dataset.refresh, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) { el.innerHTML = html; el.dataset.refreshedAt = String(Date.now()); })
      .catch(function () { /* keep what is shown; the next tick tries again */ });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(function (el) {
      var every = Number(el.dataset.every || 5) * 1000;
      setInterval(function () { refresh(el); }, every);
    });
    document.addEventListener("submit", function (event) {
      var form = event.target;
      if (form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
})();
