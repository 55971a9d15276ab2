"""Record formats derived from agent/_event_layout_decl.py: generated, do not edit.

Regenerate with `make layout` (python -m agent._fastdecode write) after
changing a declaration; tests/unit/test_event_layout.py fails while this
file is stale.  The running agent imports this instead of construct.
"""

EVENT_HEADER_FORMAT = "<LQQqQQLLlLLHBBHHHBB16s16s16sHBBLHH"
EVENT_HEADER_SIZE = 136
EVENT_HEADER_NAMES = (
    "kind", "ts_ns", "conn_id", "ret", "bytes_tx", "bytes_rx", "tgid", "tid", "fd", "tcp_seq",
    "payload_len", "syscall", "direction", "role", "family", "sport", "dport", "l4_proto",
    "flags", "saddr", "daddr", "comm", "app_proto", "tls", "tls_version", "shed", "xflags",
    "reserved",
)

BATCH_HEADER_FORMAT = "<LQHH"
BATCH_HEADER_SIZE = 16
BATCH_HEADER_NAMES = (
    "kind", "flush_ns", "count", "reason",
)

BUDGET_FORMAT = "<QQLLQQ"
BUDGET_SIZE = 40
BUDGET_NAMES = (
    "interval_ns", "burst_ns", "level", "pad", "tat_ns", "blocked_ns",
)

SHED_PROC_FORMAT = "<QQ"
SHED_PROC_SIZE = 16
SHED_PROC_NAMES = (
    "exchanges", "connections",
)

MON_MARK_FORMAT = "<QQQQ"
MON_MARK_SIZE = 32
MON_MARK_NAMES = (
    "ts_ns", "oncpu_ns", "wait_ns", "iowait_ns",
)

MON_THREAD_FORMAT = "<LLLLQ2048s"
MON_THREAD_SIZE = 2072
MON_THREAD_NAMES = (
    "tid", "tgid", "seq", "head", "exit_ns", "marks",
)

MON_TUPLE_FORMAT = "<HHHH16s16s"
MON_TUPLE_SIZE = 40
MON_TUPLE_NAMES = (
    "family", "lport", "rport", "pad", "laddr", "raddr",
)

MON_TCP_FORMAT = "<40sLLLLQQQQQQQQQQQQQQQQQQLLLLLLLLLLLLLLLL"
MON_TCP_SIZE = 264
MON_TCP_NAMES = (
    "key", "tgid", "srtt_us", "seq", "head", "retransmits", "closed_ns", "retrans_ns[0]",
    "retrans_ns[1]", "retrans_ns[2]", "retrans_ns[3]", "retrans_ns[4]", "retrans_ns[5]",
    "retrans_ns[6]", "retrans_ns[7]", "retrans_ns[8]", "retrans_ns[9]", "retrans_ns[10]",
    "retrans_ns[11]", "retrans_ns[12]", "retrans_ns[13]", "retrans_ns[14]", "retrans_ns[15]",
    "retrans_segs[0]", "retrans_segs[1]", "retrans_segs[2]", "retrans_segs[3]",
    "retrans_segs[4]", "retrans_segs[5]", "retrans_segs[6]", "retrans_segs[7]",
    "retrans_segs[8]", "retrans_segs[9]", "retrans_segs[10]", "retrans_segs[11]",
    "retrans_segs[12]", "retrans_segs[13]", "retrans_segs[14]", "retrans_segs[15]",
)

MON_SHARED_FORMAT = "<QQ"
MON_SHARED_SIZE = 16
MON_SHARED_NAMES = (
    "last_retransmit_ns", "retransmits",
)

MON_PROC_FORMAT = "<QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"
MON_PROC_SIZE = 280
MON_PROC_NAMES = (
    "oncpu_ns", "wait_ns", "iowait_ns", "voluntary", "involuntary", "minor_faults",
    "major_faults", "disk_read_bytes", "disk_write_bytes", "tcp_retransmits", "oom_kills",
    "wait_hist[0]", "wait_hist[1]", "wait_hist[2]", "wait_hist[3]", "wait_hist[4]",
    "wait_hist[5]", "wait_hist[6]", "wait_hist[7]", "wait_hist[8]", "wait_hist[9]",
    "wait_hist[10]", "wait_hist[11]", "wait_hist[12]", "wait_hist[13]", "wait_hist[14]",
    "wait_hist[15]", "wait_hist[16]", "wait_hist[17]", "wait_hist[18]", "wait_hist[19]",
    "wait_hist[20]", "wait_hist[21]", "wait_hist[22]", "wait_hist[23]",
)

MON_DISK_KEY_FORMAT = "<LL"
MON_DISK_KEY_SIZE = 8
MON_DISK_KEY_NAMES = (
    "dev", "op",
)

MON_DISK_FORMAT = "<QQQQQQQQQQQQQQQQQQQQQQQQQQQ"
MON_DISK_SIZE = 216
MON_DISK_NAMES = (
    "ops", "bytes", "time_ns", "hist[0]", "hist[1]", "hist[2]", "hist[3]", "hist[4]",
    "hist[5]", "hist[6]", "hist[7]", "hist[8]", "hist[9]", "hist[10]", "hist[11]", "hist[12]",
    "hist[13]", "hist[14]", "hist[15]", "hist[16]", "hist[17]", "hist[18]", "hist[19]",
    "hist[20]", "hist[21]", "hist[22]", "hist[23]",
)

MON_HOST_FORMAT = "<QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"
MON_HOST_SIZE = 2072
MON_HOST_NAMES = (
    "tcp_retransmits", "tcp_retransmit_fails", "oom_kills", "tcp_transitions[0]",
    "tcp_transitions[1]", "tcp_transitions[2]", "tcp_transitions[3]", "tcp_transitions[4]",
    "tcp_transitions[5]", "tcp_transitions[6]", "tcp_transitions[7]", "tcp_transitions[8]",
    "tcp_transitions[9]", "tcp_transitions[10]", "tcp_transitions[11]", "tcp_transitions[12]",
    "tcp_transitions[13]", "tcp_transitions[14]", "tcp_transitions[15]", "tcp_transitions[16]",
    "tcp_transitions[17]", "tcp_transitions[18]", "tcp_transitions[19]", "tcp_transitions[20]",
    "tcp_transitions[21]", "tcp_transitions[22]", "tcp_transitions[23]", "tcp_transitions[24]",
    "tcp_transitions[25]", "tcp_transitions[26]", "tcp_transitions[27]", "tcp_transitions[28]",
    "tcp_transitions[29]", "tcp_transitions[30]", "tcp_transitions[31]", "tcp_transitions[32]",
    "tcp_transitions[33]", "tcp_transitions[34]", "tcp_transitions[35]", "tcp_transitions[36]",
    "tcp_transitions[37]", "tcp_transitions[38]", "tcp_transitions[39]", "tcp_transitions[40]",
    "tcp_transitions[41]", "tcp_transitions[42]", "tcp_transitions[43]", "tcp_transitions[44]",
    "tcp_transitions[45]", "tcp_transitions[46]", "tcp_transitions[47]", "tcp_transitions[48]",
    "tcp_transitions[49]", "tcp_transitions[50]", "tcp_transitions[51]", "tcp_transitions[52]",
    "tcp_transitions[53]", "tcp_transitions[54]", "tcp_transitions[55]", "tcp_transitions[56]",
    "tcp_transitions[57]", "tcp_transitions[58]", "tcp_transitions[59]", "tcp_transitions[60]",
    "tcp_transitions[61]", "tcp_transitions[62]", "tcp_transitions[63]", "tcp_transitions[64]",
    "tcp_transitions[65]", "tcp_transitions[66]", "tcp_transitions[67]", "tcp_transitions[68]",
    "tcp_transitions[69]", "tcp_transitions[70]", "tcp_transitions[71]", "tcp_transitions[72]",
    "tcp_transitions[73]", "tcp_transitions[74]", "tcp_transitions[75]", "tcp_transitions[76]",
    "tcp_transitions[77]", "tcp_transitions[78]", "tcp_transitions[79]", "tcp_transitions[80]",
    "tcp_transitions[81]", "tcp_transitions[82]", "tcp_transitions[83]", "tcp_transitions[84]",
    "tcp_transitions[85]", "tcp_transitions[86]", "tcp_transitions[87]", "tcp_transitions[88]",
    "tcp_transitions[89]", "tcp_transitions[90]", "tcp_transitions[91]", "tcp_transitions[92]",
    "tcp_transitions[93]", "tcp_transitions[94]", "tcp_transitions[95]", "tcp_transitions[96]",
    "tcp_transitions[97]", "tcp_transitions[98]", "tcp_transitions[99]",
    "tcp_transitions[100]", "tcp_transitions[101]", "tcp_transitions[102]",
    "tcp_transitions[103]", "tcp_transitions[104]", "tcp_transitions[105]",
    "tcp_transitions[106]", "tcp_transitions[107]", "tcp_transitions[108]",
    "tcp_transitions[109]", "tcp_transitions[110]", "tcp_transitions[111]",
    "tcp_transitions[112]", "tcp_transitions[113]", "tcp_transitions[114]",
    "tcp_transitions[115]", "tcp_transitions[116]", "tcp_transitions[117]",
    "tcp_transitions[118]", "tcp_transitions[119]", "tcp_transitions[120]",
    "tcp_transitions[121]", "tcp_transitions[122]", "tcp_transitions[123]",
    "tcp_transitions[124]", "tcp_transitions[125]", "tcp_transitions[126]",
    "tcp_transitions[127]", "tcp_transitions[128]", "tcp_transitions[129]",
    "tcp_transitions[130]", "tcp_transitions[131]", "tcp_transitions[132]",
    "tcp_transitions[133]", "tcp_transitions[134]", "tcp_transitions[135]",
    "tcp_transitions[136]", "tcp_transitions[137]", "tcp_transitions[138]",
    "tcp_transitions[139]", "tcp_transitions[140]", "tcp_transitions[141]",
    "tcp_transitions[142]", "tcp_transitions[143]", "tcp_transitions[144]",
    "tcp_transitions[145]", "tcp_transitions[146]", "tcp_transitions[147]",
    "tcp_transitions[148]", "tcp_transitions[149]", "tcp_transitions[150]",
    "tcp_transitions[151]", "tcp_transitions[152]", "tcp_transitions[153]",
    "tcp_transitions[154]", "tcp_transitions[155]", "tcp_transitions[156]",
    "tcp_transitions[157]", "tcp_transitions[158]", "tcp_transitions[159]",
    "tcp_transitions[160]", "tcp_transitions[161]", "tcp_transitions[162]",
    "tcp_transitions[163]", "tcp_transitions[164]", "tcp_transitions[165]",
    "tcp_transitions[166]", "tcp_transitions[167]", "tcp_transitions[168]",
    "tcp_transitions[169]", "tcp_transitions[170]", "tcp_transitions[171]",
    "tcp_transitions[172]", "tcp_transitions[173]", "tcp_transitions[174]",
    "tcp_transitions[175]", "tcp_transitions[176]", "tcp_transitions[177]",
    "tcp_transitions[178]", "tcp_transitions[179]", "tcp_transitions[180]",
    "tcp_transitions[181]", "tcp_transitions[182]", "tcp_transitions[183]",
    "tcp_transitions[184]", "tcp_transitions[185]", "tcp_transitions[186]",
    "tcp_transitions[187]", "tcp_transitions[188]", "tcp_transitions[189]",
    "tcp_transitions[190]", "tcp_transitions[191]", "tcp_transitions[192]",
    "tcp_transitions[193]", "tcp_transitions[194]", "tcp_transitions[195]",
    "tcp_transitions[196]", "tcp_transitions[197]", "tcp_transitions[198]",
    "tcp_transitions[199]", "tcp_transitions[200]", "tcp_transitions[201]",
    "tcp_transitions[202]", "tcp_transitions[203]", "tcp_transitions[204]",
    "tcp_transitions[205]", "tcp_transitions[206]", "tcp_transitions[207]",
    "tcp_transitions[208]", "tcp_transitions[209]", "tcp_transitions[210]",
    "tcp_transitions[211]", "tcp_transitions[212]", "tcp_transitions[213]",
    "tcp_transitions[214]", "tcp_transitions[215]", "tcp_transitions[216]",
    "tcp_transitions[217]", "tcp_transitions[218]", "tcp_transitions[219]",
    "tcp_transitions[220]", "tcp_transitions[221]", "tcp_transitions[222]",
    "tcp_transitions[223]", "tcp_transitions[224]", "tcp_transitions[225]",
    "tcp_transitions[226]", "tcp_transitions[227]", "tcp_transitions[228]",
    "tcp_transitions[229]", "tcp_transitions[230]", "tcp_transitions[231]",
    "tcp_transitions[232]", "tcp_transitions[233]", "tcp_transitions[234]",
    "tcp_transitions[235]", "tcp_transitions[236]", "tcp_transitions[237]",
    "tcp_transitions[238]", "tcp_transitions[239]", "tcp_transitions[240]",
    "tcp_transitions[241]", "tcp_transitions[242]", "tcp_transitions[243]",
    "tcp_transitions[244]", "tcp_transitions[245]", "tcp_transitions[246]",
    "tcp_transitions[247]", "tcp_transitions[248]", "tcp_transitions[249]",
    "tcp_transitions[250]", "tcp_transitions[251]", "tcp_transitions[252]",
    "tcp_transitions[253]", "tcp_transitions[254]", "tcp_transitions[255]",
)

CTX_EVENT_FORMAT = "<LLLLQQQQ"
CTX_EVENT_SIZE = 48
CTX_EVENT_NAMES = (
    "kind", "tgid", "tid", "aux", "ts_ns", "a", "b", "c",
)
