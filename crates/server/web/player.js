// deadsfu player: WHEP playback of ?room= (default mainroom), a live room list, switching
// rooms without renegotiation, stats, reconnect with backoff.
// State for tests and curious people: window.deadsfu.
'use strict';

(function () {
  const W = window.deadsfuWeb;
  const $ = (id) => document.getElementById(id);

  const video = $('video');
  const ui = {
    box: $('video-box'),
    overlay: $('overlay'),
    roomName: $('room-name'),
    status: $('status'),
    message: $('message'),
    stats: $('stats'),
    unmute: $('unmute'),
    fullscreen: $('fullscreen'),
    reconnect: $('reconnect'),
    tokenForm: $('token-form'),
    tokenInput: $('token-input'),
    roomList: $('room-list'),
    roomsNote: $('rooms-note'),
    roomForm: $('room-form'),
    roomInput: $('room-input'),
    sendLink: $('send-link'),
    homeLink: $('home-link'),
  };

  const initialRoom = W.params.get('room') || 'mainroom';

  // Everything worth knowing, kept up to date; read by the browser tests.
  const S = (window.deadsfu = {
    room: initialRoom,
    sessionUrl: null,
    state: 'connecting', // 'connecting' | 'playing' | 'error'
    lastError: null,
    message: '',
    connectionState: 'new',
    whepPosts: 0, // WHEP sessions created (POST /whep/...)
    switches: 0, // rooms switched in place (POST {session}/room)
    reconnects: 0,
    follows: 0, // cluster mode: reconnects to the node that became the room's owner
    rooms: null, // last room list from the server, null until known
    roomsAvailable: null, // false when the server has no room API
    firstFrameMs: null, // from the start of the connection to the first decoded frame
    // From a switch request to the next change of picture size (meaningful when the two
    // rooms send different sizes, as in the tests).
    lastSwitchMs: null,
    stats: {},
    switchRoom: (name) => switchRoom(name),
  });

  let token = W.params.get('access_token') || '';
  let pc = null;
  let gen = 0; // bumped on each (re)connect; stale callbacks compare against it
  let attempt = 0; // consecutive failures, for the backoff
  let retryTimer = null;
  let disconnectTimer = null;
  let connectStartedAt = 0;
  let authFailed = false;
  let switching = false;
  let switchStartedAt = null;

  // ---------------------------------------------------------------- connection

  function closePc() {
    clearTimeout(disconnectTimer);
    if (pc) {
      try { pc.close(); } catch (e) { /* closed already */ }
      pc = null;
    }
    if (S.sessionUrl) W.endSession(S.sessionUrl, token);
    S.sessionUrl = null;
  }

  async function connect() {
    const my = ++gen;
    clearTimeout(retryTimer);
    closePc();
    authFailed = false;
    S.state = 'connecting';
    S.connectionState = 'new';
    S.firstFrameMs = null;
    connectStartedAt = performance.now();
    render();

    const thisPc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    pc = thisPc;
    thisPc.addTransceiver('video', { direction: 'recvonly' });
    thisPc.addTransceiver('audio', { direction: 'recvonly' });
    const remote = new MediaStream();
    thisPc.ontrack = (ev) => {
      if (my !== gen) return;
      remote.addTrack(ev.track);
      if (video.srcObject !== remote) video.srcObject = remote;
      video.play().catch(() => { /* autoplay policy: muted, so it normally plays */ });
    };
    thisPc.onconnectionstatechange = () => {
      if (my !== gen) return;
      onConnectionState(thisPc.connectionState);
    };

    try {
      S.whepPosts++;
      const url = await W.negotiate(
        thisPc, W.apiUrl('/whep/' + encodeURIComponent(S.room)), token);
      if (my !== gen) {
        W.endSession(url, token);
        return;
      }
      S.sessionUrl = url;
      render();
    } catch (err) {
      if (my !== gen) return;
      fail(err);
    }
  }

  function onConnectionState(st) {
    S.connectionState = st;
    clearTimeout(disconnectTimer);
    if (st === 'failed') {
      fail(new Error('connection failed (ICE/DTLS)'));
    } else if (st === 'disconnected') {
      // Often recovers by itself; give it a few seconds.
      disconnectTimer = setTimeout(() => {
        if (pc && pc.connectionState === 'disconnected') fail(new Error('connection lost'));
      }, 4000);
    }
    render();
  }

  function fail(err) {
    const status = err && err.status;
    S.state = 'error';
    S.lastError = W.describeError(err, 'playback', S.room);
    if (status === 401 || status === 403) {
      // Retrying will not help until somebody gives us a token.
      authFailed = true;
      closePc();
      render();
      ui.tokenInput.focus();
      return;
    }
    scheduleReconnect();
    render();
  }

  function scheduleReconnect() {
    clearTimeout(retryTimer);
    const delay = Math.min(1000 * 2 ** attempt, 15000) * (0.8 + Math.random() * 0.4);
    attempt++;
    S.retryInMs = Math.round(delay);
    retryTimer = setTimeout(() => {
      S.reconnects++;
      connect();
    }, delay);
  }

  // First decoded frame: playing.
  function watchFrames() {
    const tick = () => {
      if (video.videoWidth > 0 && S.state !== 'playing' && pc &&
          (S.state === 'connecting' || S.connectionState === 'connected')) {
        S.state = 'playing';
        S.lastError = null;
        attempt = 0;
        if (S.firstFrameMs === null) {
          S.firstFrameMs = Math.round(performance.now() - connectStartedAt);
        }
        render();
      }
      schedule();
    };
    const schedule = () => {
      if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(tick);
      else setTimeout(tick, 200);
    };
    schedule();
  }

  // -------------------------------------------------------------- room switching

  async function switchRoom(name) {
    name = (name || '').trim();
    if (!W.validRoom(name)) {
      showTransient('room names are 1 to 64 of A-Z a-z 0-9 . _ -');
      return false;
    }
    if (name === S.room && S.state !== 'error') return true;
    if (switching) return false;

    if (S.sessionUrl && pc && pc.connectionState === 'connected') {
      switching = true;
      switchStartedAt = performance.now();
      S.lastSwitchMs = null;
      try {
        const res = await fetch(S.sessionUrl + '/room', {
          method: 'POST',
          headers: W.authHeaders(token, { 'Content-Type': 'application/json' }),
          body: JSON.stringify({ room: name }),
        });
        if (res.ok) {
          S.room = name;
          S.switches++;
          W.setPageParam('room', name);
          render();
          return true;
        }
        switchStartedAt = null;
        const err = await W.problemFrom(res);
        if (err.status === 401 || err.status === 403) {
          fail(err);
          return false;
        }
        if (err.status !== 404 && err.status !== 405) {
          showTransient('cannot switch to ' + name + ': ' + W.describeError(err, 'switch', name));
          return false;
        }
        // 404/405: the session is gone or the server cannot switch: start a new session.
      } catch (e) {
        // network trouble: fall through to a new session
        switchStartedAt = null;
      } finally {
        switching = false;
      }
    }
    S.room = name;
    W.setPageParam('room', name);
    attempt = 0;
    connect();
    return true;
  }

  // ------------------------------------------------------------------ room list

  function handleRooms(json) {
    let data;
    try {
      data = JSON.parse(json);
    } catch (e) {
      return;
    }
    const rooms = Array.isArray(data) ? data : data && data.rooms;
    if (!Array.isArray(rooms)) return;
    S.rooms = rooms.slice().sort((a, b) => String(a.name).localeCompare(String(b.name)));
    S.roomsAvailable = true;
    followOwner();
    render();
  }

  // Cluster mode: a viewer waiting in an empty room on one node, when the room goes live on
  // another node (its owner), reconnects: the request is sent to the owner with a 307.
  let followedAt = -Infinity; // performance.now() starts at page load: a first follow may come at once
  function followOwner() {
    const info = currentRoomInfo();
    if (!info || !info.live || !info.owner_url || !S.sessionUrl) return;
    if (S.sessionUrl.startsWith(info.owner_url + '/')) return;
    // At most once every 5 s, so flapping ownership cannot make a reconnect storm.
    const now = performance.now();
    if (now - followedAt < 5000) return;
    followedAt = now;
    S.follows++;
    W.endSession(S.sessionUrl, token);
    S.sessionUrl = null;
    attempt = 0;
    connect();
  }

  // Server-sent events read with fetch, so that the bearer token goes in a header.
  async function watchRooms() {
    let delay = 1000;
    for (;;) {
      let res = null;
      try {
        res = await fetch(W.apiUrl('/api/rooms/events'), {
          headers: W.authHeaders(token, { Accept: 'text/event-stream' }),
          cache: 'no-store',
        });
        if (res.status === 404 || res.status === 405) {
          return pollRooms();
        }
        if (!res.ok) throw await W.problemFrom(res);
        delay = 1000;
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        let data = [];
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let i;
          while ((i = buf.indexOf('\n')) >= 0) {
            let line = buf.slice(0, i);
            buf = buf.slice(i + 1);
            if (line.endsWith('\r')) line = line.slice(0, -1);
            if (line === '') {
              if (data.length) handleRooms(data.join('\n'));
              data = [];
            } else if (line.startsWith('data:')) {
              data.push(line.slice(5).replace(/^ /, ''));
            }
          }
        }
      } catch (e) {
        if (e && (e.status === 401 || e.status === 403)) {
          S.roomsAvailable = false;
          ui.roomsNote.textContent = 'room list: token required or wrong';
        }
      }
      await W.sleep(delay * (0.8 + Math.random() * 0.4));
      delay = Math.min(delay * 2, 15000);
    }
  }

  // Fallback for servers without the event stream: GET /api/rooms every few seconds.
  async function pollRooms() {
    for (;;) {
      let wait = 3000;
      try {
        const res = await fetch(W.apiUrl('/api/rooms'), {
          headers: W.authHeaders(token), cache: 'no-store',
        });
        if (res.ok) handleRooms(await res.text());
        else if (res.status === 404 || res.status === 405) {
          S.roomsAvailable = false;
          wait = 15000;
          render();
        }
      } catch (e) {
        wait = 5000;
      }
      await W.sleep(wait);
    }
  }

  function currentRoomInfo() {
    if (!S.rooms) return null;
    return S.rooms.find((r) => r.name === S.room) || null;
  }

  let roomsRendered = '';
  const roomItems = new Map(); // room name -> its <li>, kept across updates
  function renderRooms() {
    const list = S.rooms ? S.rooms.slice() : [];
    const sig = JSON.stringify([S.room, list, S.roomsAvailable]);
    if (sig === roomsRendered) return;
    roomsRendered = sig;
    if (!list.some((r) => r.name === S.room)) {
      list.push({ name: S.room, live: S.rooms ? false : null, viewers: null });
      list.sort((a, b) => String(a.name).localeCompare(String(b.name)));
    }
    // Elements are updated in place, not rebuilt, so that a click (or a finger) on a room is
    // never lost to an update of the viewer counts under it.
    const keep = new Set(list.map((r) => r.name));
    for (const [name, li] of roomItems) {
      if (!keep.has(name)) {
        li.remove();
        roomItems.delete(name);
      }
    }
    let prevLi = null;
    for (const r of list) {
      let li = roomItems.get(r.name);
      if (!li) {
        li = document.createElement('li');
        const b = document.createElement('button');
        b.type = 'button';
        b.className = 'room';
        b.dataset.room = r.name;
        const name = document.createElement('span');
        name.className = 'room-label';
        name.textContent = r.name;
        const badge = document.createElement('span');
        const meta = document.createElement('span');
        meta.className = 'room-meta';
        b.append(name, badge, meta);
        b.addEventListener('click', () => switchRoom(r.name));
        li.append(b);
        roomItems.set(r.name, li);
      }
      const b = li.firstChild;
      const [, badge, meta] = b.children;
      const current = r.name === S.room;
      b.classList.toggle('current', current);
      if (current) b.setAttribute('aria-current', 'true');
      else b.removeAttribute('aria-current');
      badge.className = 'badge ' + (r.live ? 'live' : r.live === false ? 'idle' : 'unknown');
      badge.textContent = r.live ? 'live' : r.live === false ? 'idle' : '?';
      const bits = [];
      if (typeof r.viewers === 'number') bits.push(r.viewers + (r.viewers === 1 ? ' viewer' : ' viewers'));
      if (r.live && r.codec) bits.push(r.codec);
      if (r.live && typeof r.bitrate_bps === 'number' && r.bitrate_bps > 0) {
        bits.push(W.formatBitrate(r.bitrate_bps));
      }
      meta.textContent = bits.join(' · ');
      // Keep the order of `list`.
      const want = prevLi ? prevLi.nextSibling : ui.roomList.firstChild;
      if (want !== li) ui.roomList.insertBefore(li, want);
      prevLi = li;
    }
    if (S.roomsAvailable === false) {
      if (!ui.roomsNote.textContent) ui.roomsNote.textContent = 'this server has no room list';
    } else if (S.rooms && !S.rooms.some((r) => r.live)) {
      ui.roomsNote.textContent = 'nobody is publishing yet';
    } else {
      ui.roomsNote.textContent = '';
    }
  }

  // --------------------------------------------------------------------- render

  let transient = null;
  let transientTimer = null;
  function showTransient(text) {
    transient = text;
    clearTimeout(transientTimer);
    transientTimer = setTimeout(() => { transient = null; render(); }, 5000);
    render();
  }

  function render() {
    ui.roomName.textContent = S.room;
    document.title = S.room + ' · deadsfu';
    ui.status.textContent = S.state;
    ui.status.dataset.state = S.state;

    const info = currentRoomInfo();
    let msg = '';
    let kind = 'info';
    if (S.state === 'error' && S.lastError) {
      msg = S.lastError;
      if (!authFailed && S.retryInMs) msg += ' — retrying in ' + Math.ceil(S.retryInMs / 1000) + ' s';
      kind = 'error';
    } else if (S.state === 'connecting' && S.lastError && attempt > 0) {
      msg = 'reconnecting (last error: ' + S.lastError + ')';
      kind = 'error';
    } else if (transient) {
      msg = transient;
    } else if (S.rooms && (!info || !info.live)) {
      msg = 'room ' + S.room + ' is not live' +
        (video.videoWidth > 0 ? ' (showing the idle picture)' : '');
    }
    S.message = msg;
    ui.message.textContent = msg;
    ui.message.hidden = !msg;
    ui.message.dataset.kind = kind;
    ui.tokenForm.hidden = !authFailed;

    if (S.state === 'playing') ui.overlay.hidden = true;
    else {
      ui.overlay.hidden = false;
      ui.overlay.textContent = S.state === 'error' ? (authFailed ? 'token needed' : 'reconnecting…')
        : 'connecting…';
    }

    ui.unmute.textContent = video.muted ? 'Unmute' : 'Mute';
    ui.unmute.setAttribute('aria-pressed', String(!video.muted));
    ui.sendLink.href = W.pageUrl('send', { room: S.room });
    renderRooms();
  }

  // ---------------------------------------------------------------------- stats

  let prev = null;
  async function updateStats() {
    if (!pc || pc.connectionState === 'closed') {
      prev = null;
      ui.stats.textContent = 'no stats yet';
      return;
    }
    let report;
    try {
      report = await pc.getStats();
    } catch (e) {
      return;
    }
    let v = null;
    let bytes = 0;
    let lost = 0;
    let received = 0;
    let pair = null;
    let selectedPairId = null;
    const codecs = {};
    report.forEach((r) => {
      if (r.type === 'inbound-rtp') {
        bytes += r.bytesReceived || 0;
        lost += Math.max(r.packetsLost || 0, 0);
        received += r.packetsReceived || 0;
        if (r.kind === 'video') v = r;
      } else if (r.type === 'transport' && r.selectedCandidatePairId) {
        selectedPairId = r.selectedCandidatePairId;
      } else if (r.type === 'candidate-pair' && r.nominated && r.state === 'succeeded') {
        pair = pair || r;
      } else if (r.type === 'codec') {
        codecs[r.id] = r;
      }
    });
    if (selectedPairId && report.get(selectedPairId)) pair = report.get(selectedPairId);
    const now = performance.now();
    const st = {};
    if (prev) {
      const dt = (now - prev.t) / 1000;
      st.bitrate = dt > 0 ? Math.max(0, (bytes - prev.bytes) * 8 / dt) : 0;
      const dl = lost - prev.lost;
      const dr = received - prev.received;
      st.lossPct = dl + dr > 0 ? (100 * Math.max(dl, 0)) / (dl + dr) : 0;
    }
    prev = { t: now, bytes, lost, received };
    st.width = video.videoWidth;
    st.height = video.videoHeight;
    if (v) {
      st.fps = v.framesPerSecond || 0;
      st.framesDecoded = v.framesDecoded || 0;
      if (v.codecId && codecs[v.codecId]) st.codec = codecs[v.codecId].mimeType.replace(/^video\//, '');
    }
    if (pair && typeof pair.currentRoundTripTime === 'number') {
      st.rttMs = Math.round(pair.currentRoundTripTime * 1000);
    }
    const q = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
    if (q) st.totalVideoFrames = q.totalVideoFrames;
    S.stats = st;

    const parts = [];
    if (st.width) parts.push(st.width + '×' + st.height);
    if (st.fps !== undefined) parts.push(Math.round(st.fps) + ' fps');
    if (st.bitrate !== undefined) parts.push(W.formatBitrate(st.bitrate));
    if (st.codec) parts.push(st.codec);
    if (st.lossPct !== undefined) parts.push('loss ' + st.lossPct.toFixed(1) + '%');
    if (st.rttMs !== undefined) parts.push('rtt ' + st.rttMs + ' ms');
    ui.stats.textContent = parts.length ? parts.join(' · ') : 'no stats yet';
    render(); // the "idle picture" wording depends on whether frames arrive
  }

  // ------------------------------------------------------------------- controls

  function toggleMute() {
    video.muted = !video.muted;
    if (!video.muted) video.play().catch(() => {});
    render();
  }

  function toggleFullscreen() {
    const fsEl = document.fullscreenElement || document.webkitFullscreenElement;
    if (fsEl) {
      (document.exitFullscreen || document.webkitExitFullscreen).call(document);
      return;
    }
    const box = ui.box;
    if (box.requestFullscreen) box.requestFullscreen().catch(() => {});
    else if (box.webkitRequestFullscreen) box.webkitRequestFullscreen();
    else if (video.webkitEnterFullscreen) video.webkitEnterFullscreen(); // iPhone
  }

  ui.unmute.addEventListener('click', toggleMute);
  ui.fullscreen.addEventListener('click', toggleFullscreen);
  video.addEventListener('dblclick', toggleFullscreen);
  video.addEventListener('volumechange', render);
  video.addEventListener('resize', () => {
    if (switchStartedAt !== null) {
      S.lastSwitchMs = Math.round(performance.now() - switchStartedAt);
      switchStartedAt = null;
    }
  });
  ui.reconnect.addEventListener('click', () => {
    attempt = 0;
    S.reconnects++;
    connect();
  });
  ui.tokenForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    token = ui.tokenInput.value.trim();
    W.setPageParam('access_token', token);
    attempt = 0;
    connect();
  });
  ui.roomForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    if (ui.roomInput.value.trim()) switchRoom(ui.roomInput.value).then((ok) => {
      if (ok) ui.roomInput.value = '';
    });
  });
  document.addEventListener('keydown', (ev) => {
    if (ev.target instanceof HTMLInputElement || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.key === 'm') toggleMute();
    else if (ev.key === 'f') toggleFullscreen();
  });
  window.addEventListener('pagehide', () => {
    if (S.sessionUrl) W.endSession(S.sessionUrl, token);
  });

  // ---------------------------------------------------------------------- start

  ui.homeLink.href = W.pageUrl('player', {});
  if (!W.validRoom(S.room)) {
    S.state = 'error';
    S.lastError = 'bad room name "' + S.room + '": use 1 to 64 of A-Z a-z 0-9 . _ -';
    render();
    return;
  }
  render();
  watchFrames();
  setInterval(updateStats, 1000);
  watchRooms();
  connect();
})();
