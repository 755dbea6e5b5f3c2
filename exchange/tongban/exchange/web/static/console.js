// Tongban console: progressive enhancement only; every page works without this file.
"use strict";
(function () {
  // 'Verify the log': poll the job's progress.
  const job = document.getElementById("verify-job");
  if (job) {
    const bar = document.getElementById("verify-progress");
    const text = document.getElementById("verify-text");
    const poll = async () => {
      const r = await fetch("/console/audit/verify/status?job=" + encodeURIComponent(job.dataset.job), { credentials: "same-origin" });
      if (!r.ok) { return; }
      const s = await r.json();
      bar.max = Math.max(s.total, 1);
      bar.value = s.state === "ok" ? bar.max : s.done;
      text.textContent = s.text;
      text.dataset.state = s.state;
      if (s.state === "running") { setTimeout(poll, 300); }
    };
    if (text.dataset.state === "running") { poll(); }
  }
  // Scan a QR code with the camera where the browser offers BarcodeDetector.
  const camera = document.getElementById("camera");
  if (camera && "BarcodeDetector" in window && navigator.mediaDevices) {
    camera.hidden = false;
    camera.addEventListener("click", async () => {
      const video = document.getElementById("preview");
      try {
        const detector = new window.BarcodeDetector({ formats: ["qr_code"] });
        const stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
        video.srcObject = stream; video.hidden = false; await video.play();
        const scan = async () => {
          const codes = await detector.detect(video);
          if (codes.length) {
            stream.getTracks().forEach((t) => t.stop());
            document.getElementById("qr").value = codes[0].rawValue;
            document.getElementById("verify-form").submit();
          } else { requestAnimationFrame(scan); }
        };
        scan();
      } catch (e) { camera.textContent = camera.dataset.none; camera.disabled = true; }
    });
  }
})();
