/* Progressive enhancement only: every form works without this file. */
(function () {
  "use strict";
  function debounce(fn, ms) {
    var t;
    return function () {
      var args = arguments, self = this;
      clearTimeout(t);
      t = setTimeout(function () { fn.apply(self, args); }, ms);
    };
  }

  function getJSON(url, done) {
    var xhr = new XMLHttpRequest();
    xhr.open("GET", url);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.onload = function () {
      if (xhr.status === 200) { try { done(JSON.parse(xhr.responseText)); } catch (e) { /* ignore */ } }
    };
    xhr.send();
  }

  // Live check of the resident identity number with the server's rules (same as the API).
  var form = document.querySelector("form[data-resident-id-check]");
  if (form) {
    var input = form.querySelector("[data-live-id]");
    var out = document.getElementById("resident_id-live");
    var birth = form.querySelector("#birth_date");
    var gender = form.querySelector("#gender");
    var check = debounce(function () {
      var value = input.value.trim();
      if (!value) { out.textContent = ""; out.className = "live-check"; return; }
      if (value.length < 18) {
        out.textContent = (out.getAttribute("data-more") || "{n}").replace("{n}", String(18 - value.length));
        out.className = "live-check";
        return;
      }
      var url = form.getAttribute("data-resident-id-check") + "?value=" + encodeURIComponent(value) +
        "&birth_date=" + encodeURIComponent(birth ? birth.value : "") +
        "&gender=" + encodeURIComponent(gender ? gender.value : "");
      getJSON(url, function (r) {
        if (r.valid) {
          out.textContent = "✓ " + (out.getAttribute("data-valid") || "");
          out.className = "live-check ok";
          if (birth && !birth.value && r.birth_date) { birth.value = r.birth_date; }
          if (gender && !gender.value && r.gender) { gender.value = r.gender; }
          input.setAttribute("aria-invalid", "false");
        } else {
          out.textContent = r.problems.join(" ");
          out.className = "live-check bad";
          input.setAttribute("aria-invalid", "true");
        }
      });
    }, 250);
    input.addEventListener("input", check);
    if (birth) { birth.addEventListener("change", check); }
    if (gender) { gender.addEventListener("change", check); }
  }

  // ICD-10 suggestions by code or name into the shared <datalist>.
  var list = document.getElementById("icd10-options");
  var names = {};
  function showName(input) {
    var span = input.parentNode.querySelector(".icd10-name");
    if (span) { span.textContent = names[input.value.trim().toUpperCase()] || ""; }
  }
  Array.prototype.forEach.call(document.querySelectorAll("input[data-icd10]"), function (input) {
    var suggest = debounce(function () {
      var q = input.value.trim();
      if (!q) { return; }
      getJSON(input.getAttribute("data-icd10") + "?q=" + encodeURIComponent(q), function (items) {
        if (!list) { return; }
        list.innerHTML = "";
        items.forEach(function (item) {
          names[item.code] = item.name;
          var option = document.createElement("option");
          option.value = item.code;
          option.label = item.code + " " + item.name;
          option.textContent = item.code + " " + item.name;
          list.appendChild(option);
        });
        showName(input);
      });
    }, 200);
    input.addEventListener("input", suggest);
    input.addEventListener("change", function () { showName(input); });
  });

  // Focus the error summary so screen readers announce it.
  var summary = document.getElementById("error-summary");
  if (summary) { summary.focus(); }
})();

/* Print buttons on the settlement slip. */
(function () {
  "use strict";
  Array.prototype.forEach.call(document.querySelectorAll("[data-print]"), function (button) {
    button.addEventListener("click", function () { window.print(); });
  });
})();

/* Long-running forms (the settlement export): show a spinner and stop a second submit. */
(function () {
  "use strict";
  Array.prototype.forEach.call(document.querySelectorAll("form[data-busy]"), function (form) {
    form.addEventListener("submit", function (event) {
      if (form.classList.contains("busy")) { event.preventDefault(); return; }
      form.classList.add("busy");
      form.setAttribute("aria-busy", "true");
    });
  });
})();
