// notifier console: small progressive enhancements; every page works without this.
(function () {
  "use strict";

  // Ask before a replay (forms marked data-confirm).
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) {
        event.preventDefault();
      }
    });
  });

  // "Select all" checkboxes in table headers.
  document.querySelectorAll("input[data-select-all]").forEach(function (box) {
    box.addEventListener("change", function () {
      var name = box.getAttribute("data-select-all");
      var form = box.closest("form") || document;
      form.querySelectorAll('input[type="checkbox"][name="' + name + '"]').forEach(function (item) {
        item.checked = box.checked;
      });
    });
  });

  // The overview refreshes itself every minute while the tab is visible.
  if (document.body.classList.contains("auto-refresh")) {
    window.setInterval(function () {
      if (document.visibilityState === "visible") {
        window.location.reload();
      }
    }, 60000);
  }

  // Bring a linked delivery (#d-...) into view and mark it.
  if (window.location.hash.indexOf("#d-") === 0) {
    var target = document.getElementById(window.location.hash.slice(1));
    if (target) {
      target.classList.add("targeted");
    }
  }
})();
