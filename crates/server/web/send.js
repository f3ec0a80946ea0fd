// deadsfu browser publisher: camera + microphone or screen, sent over WHIP.
// Query parameters: room, access_token, source=camera|screen, width, height, fps,
// hint (video contentHint: motion|detail|text), start=1 (start at once), server.
// State for tests and curious people: window.deadsfuSend.
'use strict';

(function () {
  const W = window.deadsfuWeb;
  const $ = (id) => document.getElementById(id);
  const P = W.params;

  const ui = {
    form: $('send-form'),
    room: $('room'),
    token: $('token'),
    start: $('start'),
    stop: $('stop'),
    preview: $('preview'),
    overlay: $('overlay'),
    status: $('status'),
    message: $('message'),
    stats: $('stats'),
    watchLink: $('watch-link'),
    watchTop: $('watch-top'),
    copyLink: $('copy-link'),
    homeLink: $('home-link'),
  };

  const S = (window.deadsfuSend = {
    state: 'idle', // 'idle' | 'starting' | 'sending' | 'error'
    room: P.get('room') || 'mainroom',
    source: P.get('source') === 'screen' ? 'screen' : 'camera',
    sessionUrl: null,
    lastError: null,
    message: '',
    connectionState: 'new',
    whipPosts: 0,
    h264Preferred: null, // true when the browser offers H264 and it was put first
    stats: {},
    watchUrl: '',
  });

  ui.room.value = S.room;
  ui.token.value = P.get('access_token') || '';
  for (const r of document.querySelectorAll('input[name=source]')) r.checked = r.value === S.source;

  let stream = null;
  let pc = null;
  let gen = 0;
  let attempt = 0;
  let retryTimer = null;
  let disconnectTimer = null;
  let note = ''; // informational, e.g. "no microphone"

  function intParam(name) {
    const v = parseInt(P.get(name) || '', 10);
    return Number.isFinite(v) && v > 0 ? v : null;
  }

  async function getMedia(source) {
    const width = intParam('width');
    const height = intParam('height');
    const fps = intParam('fps') || 30;
    if (source === 'screen') {
      if (!navigator.mediaDevices || !navigator.mediaDevices.getDisplayMedia) {
        throw new Error('this browser cannot share its screen');
      }
      const v = { frameRate: { ideal: fps } };
      if (width) v.width = { ideal: width };
      if (height) v.height = { ideal: height };
      return navigator.mediaDevices.getDisplayMedia({ video: v, audio: true });
    }
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error('no camera access here (the page needs https or localhost)');
    }
    const v = { frameRate: { ideal: fps } };
    if (width || height) {
      if (width) v.width = { ideal: width };
      if (height) v.height = { ideal: height };
    } else {
      v.width = { ideal: 1280 };
      v.height = { ideal: 720 };
    }
    try {
      return await navigator.mediaDevices.getUserMedia({ video: v, audio: true });
    } catch (e) {
      if (e && (e.name === 'NotFoundError' || e.name === 'NotReadableError' ||
                e.name === 'OverconstrainedError')) {
        // Maybe just no microphone: try the camera alone.
        const s = await navigator.mediaDevices.getUserMedia({ video: v });
        note = 'no microphone: sending video only';
        return s;
      }
      throw e;
    }
  }

  // Puts H264 first (packetization-mode=1, constrained baseline first), keeping the others.
  function preferH264(transceiver) {
    if (!transceiver.setCodecPreferences || !window.RTCRtpReceiver ||
        !RTCRtpReceiver.getCapabilities) {
      S.h264Preferred = false;
      return;
    }
    const caps = RTCRtpReceiver.getCapabilities('video');
    if (!caps) return;
    const score = (c) => {
      if (c.mimeType.toLowerCase() !== 'video/h264') return 0;
      const f = c.sdpFmtpLine || '';
      let s = 10;
      if (/packetization-mode=1/.test(f)) s += 4;
      if (/profile-level-id=42e0/i.test(f)) s += 2;
      else if (/profile-level-id=4200/i.test(f)) s += 1;
      return s;
    };
    const codecs = caps.codecs.slice();
    S.h264Preferred = codecs.some((c) => score(c) > 0);
    if (!S.h264Preferred) return;
    codecs.sort((a, b) => score(b) - score(a)); // stable: the others keep their order
    try {
      transceiver.setCodecPreferences(codecs);
    } catch (e) {
      S.h264Preferred = false;
    }
  }

  function closePc() {
    clearTimeout(disconnectTimer);
    if (pc) {
      try { pc.close(); } catch (e) { /* closed */ }
      pc = null;
    }
    if (S.sessionUrl) W.endSession(S.sessionUrl, ui.token.value.trim());
    S.sessionUrl = null;
    prev = null;
  }

  function stopMedia() {
    if (stream) for (const t of stream.getTracks()) t.stop();
    stream = null;
    ui.preview.srcObject = null;
  }

  async function start() {
    const room = ui.room.value.trim();
    if (!W.validRoom(room)) {
      setError('room names are 1 to 64 of A-Z a-z 0-9 . _ -', false);
      return;
    }
    const sourceEl = document.querySelector('input[name=source]:checked');
    S.source = sourceEl ? sourceEl.value : 'camera';
    S.room = room;
    W.setPageParam('room', room);
    const my = ++gen;
    clearTimeout(retryTimer);
    attempt = 0;
    note = '';
    S.lastError = null;
    S.state = 'starting';
    render();
    try {
      if (!stream) {
        stream = await getMedia(S.source);
        for (const t of stream.getTracks()) {
          t.addEventListener('ended', () => {
            if (my === gen && t.kind === 'video') stop('the source ended');
          });
        }
      }
    } catch (e) {
      if (my !== gen) return;
      stream = null;
      const what = S.source === 'screen' ? 'screen sharing' : 'camera/microphone';
      setError(what + ' not available: ' + (e && e.message ? e.message : e), false);
      return;
    }
    if (my !== gen) return;
    ui.preview.srcObject = stream;
    ui.preview.play().catch(() => {});
    publish(my);
  }

  async function publish(my) {
    closePc();
    S.state = 'starting';
    render();
    const thisPc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    pc = thisPc;
    const hint = P.get('hint');
    for (const track of stream.getTracks()) {
      if (track.kind === 'video' && hint && 'contentHint' in track) track.contentHint = hint;
      const tr = thisPc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
      if (track.kind === 'video') preferH264(tr);
    }
    thisPc.onconnectionstatechange = () => {
      if (my !== gen) return;
      const st = thisPc.connectionState;
      S.connectionState = st;
      clearTimeout(disconnectTimer);
      if (st === 'connected') {
        S.state = 'sending';
        S.lastError = null;
        attempt = 0;
      } else if (st === 'failed') {
        retry(my, new Error('connection failed (ICE/DTLS)'));
      } else if (st === 'disconnected') {
        disconnectTimer = setTimeout(() => {
          if (my === gen && thisPc.connectionState === 'disconnected') {
            retry(my, new Error('connection lost'));
          }
        }, 4000);
      }
      render();
    };
    try {
      S.whipPosts++;
      const token = ui.token.value.trim();
      const url = await W.negotiate(thisPc, W.apiUrl('/whip/' + encodeURIComponent(S.room)), token);
      if (my !== gen) {
        W.endSession(url, token);
        return;
      }
      S.sessionUrl = url;
      render();
    } catch (err) {
      if (my !== gen) return;
      const status = err && err.status;
      if (status === 401 || status === 403 || status === 409 || status === 400 ||
          status === 415 || status === 422) {
        // Retrying the same thing will not help.
        closePc();
        stopMedia();
        setError(W.describeError(err, 'publishing', S.room), false);
        return;
      }
      retry(my, err);
    }
  }

  function retry(my, err) {
    S.lastError = W.describeError(err, 'publishing', S.room);
    S.state = 'error';
    closePc();
    const delay = Math.min(1000 * 2 ** attempt, 15000) * (0.8 + Math.random() * 0.4);
    attempt++;
    S.retryInMs = Math.round(delay);
    clearTimeout(retryTimer);
    retryTimer = setTimeout(() => {
      if (my === gen && stream) publish(my);
    }, delay);
    render();
  }

  function setError(text, keepMedia) {
    S.lastError = text;
    S.state = 'error';
    if (!keepMedia) {
      gen++;
      clearTimeout(retryTimer);
    }
    render();
  }

  function stop(why) {
    gen++;
    clearTimeout(retryTimer);
    closePc();
    stopMedia();
    S.state = 'idle';
    S.connectionState = 'closed';
    S.lastError = null;
    S.stats = {};
    note = why || '';
    render();
  }

  // ---------------------------------------------------------------------- stats

  let prev = null;
  async function updateStats() {
    if (!pc || S.state !== 'sending') return;
    let report;
    try {
      report = await pc.getStats();
    } catch (e) {
      return;
    }
    let v = null;
    let bytes = 0;
    let rtt = null;
    const codecs = {};
    report.forEach((r) => {
      if (r.type === 'outbound-rtp') {
        bytes += r.bytesSent || 0;
        if (r.kind === 'video') v = r;
      } else if (r.type === 'codec') {
        codecs[r.id] = r;
      } else if (r.type === 'remote-inbound-rtp' && r.kind === 'video' &&
                 typeof r.roundTripTime === 'number') {
        rtt = r.roundTripTime;
      } else if (r.type === 'candidate-pair' && r.nominated && r.state === 'succeeded' &&
                 rtt === null && typeof r.currentRoundTripTime === 'number') {
        rtt = r.currentRoundTripTime;
      }
    });
    const now = performance.now();
    const st = {};
    if (prev && now > prev.t) st.bitrate = Math.max(0, (bytes - prev.bytes) * 8 / ((now - prev.t) / 1000));
    prev = { t: now, bytes };
    if (v) {
      st.width = v.frameWidth || 0;
      st.height = v.frameHeight || 0;
      st.fps = v.framesPerSecond || 0;
      st.framesEncoded = v.framesEncoded || 0;
      if (v.qualityLimitationReason && v.qualityLimitationReason !== 'none') {
        st.limitedBy = v.qualityLimitationReason;
      }
      if (v.codecId && codecs[v.codecId]) st.codec = codecs[v.codecId].mimeType.replace(/^video\//, '');
    }
    if (rtt !== null) st.rttMs = Math.round(rtt * 1000);
    S.stats = st;
    const parts = [];
    if (st.width) parts.push(st.width + '×' + st.height);
    if (st.fps !== undefined) parts.push(Math.round(st.fps) + ' fps');
    if (st.bitrate !== undefined) parts.push(W.formatBitrate(st.bitrate));
    if (st.codec) parts.push(st.codec);
    if (st.rttMs !== undefined) parts.push('rtt ' + st.rttMs + ' ms');
    if (st.limitedBy) parts.push('limited by ' + st.limitedBy);
    ui.stats.textContent = 'sending ' + parts.join(' · ');
  }

  // --------------------------------------------------------------------- render

  function render() {
    const room = W.validRoom(ui.room.value.trim()) ? ui.room.value.trim() : S.room;
    const rel = W.pageUrl('player', { room });
    S.watchUrl = new URL(rel, location.href).href;
    ui.watchLink.href = rel;
    ui.watchLink.textContent = S.watchUrl;
    ui.watchTop.href = rel;

    ui.status.textContent = S.state;
    ui.status.dataset.state = S.state;
    const busy = S.state === 'starting' || S.state === 'sending' ||
      (S.state === 'error' && stream !== null);
    ui.start.disabled = busy;
    ui.stop.disabled = !busy;
    ui.room.disabled = busy;
    ui.token.disabled = busy;
    for (const r of document.querySelectorAll('input[name=source]')) r.disabled = busy;

    let msg = '';
    let kind = 'info';
    if (S.state === 'error' && S.lastError) {
      msg = S.lastError;
      if (stream && S.retryInMs) msg += ' — retrying in ' + Math.ceil(S.retryInMs / 1000) + ' s';
      kind = 'error';
    } else if (S.state === 'starting') {
      msg = 'starting…';
    } else if (S.state === 'sending') {
      msg = 'live in room ' + S.room + (note ? ' (' + note + ')' : '');
    } else if (note) {
      msg = note;
    }
    S.message = msg;
    ui.message.textContent = msg;
    ui.message.hidden = !msg;
    ui.message.dataset.kind = kind;

    ui.overlay.hidden = !!stream;
    if (S.state !== 'sending') {
      ui.stats.textContent = 'nothing is being sent';
    }
  }

  ui.form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    start();
  });
  ui.stop.addEventListener('click', () => stop(''));
  ui.room.addEventListener('input', render);
  ui.copyLink.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(S.watchUrl);
      ui.copyLink.textContent = 'Copied';
    } catch (e) {
      ui.copyLink.textContent = 'Copy failed';
    }
    setTimeout(() => { ui.copyLink.textContent = 'Copy'; }, 2000);
  });
  window.addEventListener('pagehide', () => {
    if (S.sessionUrl) W.endSession(S.sessionUrl, ui.token.value.trim());
  });

  ui.homeLink.href = W.pageUrl('player', {});
  setInterval(updateStats, 1000);
  render();
  if (P.get('start') === '1') start();
})();
