// The live event list: rows are added as text (never as HTML) from /v1/events/stream, which
// resumes by itself (EventSource sends Last-Event-ID after a reconnect).
(function () {
  var table = document.getElementById("events");
  if (!table || !window.EventSource) return;
  var body = table.tBodies[0];
  var after = table.getAttribute("data-after") || "0";
  var source = new EventSource("/v1/events/stream?after=" + encodeURIComponent(after));
  source.onmessage = function (message) {
    var e;
    try { e = JSON.parse(message.data); } catch (_) { return; }
    var row = body.insertRow(0);
    var at = e.at_unix_ms ? new Date(e.at_unix_ms).toISOString().replace("T", " ").slice(0, 19) : "";
    [String(e.revision), at, e.tenant || "", e.workload || "", e.to || "", e.what || ""].forEach(function (text) {
      row.insertCell().textContent = text;
    });
    row.setAttribute("data-revision", String(e.revision));
    while (body.rows.length > 500) body.deleteRow(body.rows.length - 1);
  };
})();
