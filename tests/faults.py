"""The fault suite: for each way input or the environment can go wrong, the tests that prove nothing is lost.

``pytest -m fault`` (``make test-faults``) runs exactly these; every test stays
next to the code it tests. docs/runbook.md's fault table says what each fault
looks like to an operator and what to do. tests/unit/test_faults.py checks
that every test named here exists.
"""

from __future__ import annotations

FAULTS: dict[str, list[str]] = {
    "a forged calm-time handshake (SYN auth bypass)": [
        "tests/bpf/test_synauth.py::test_a_forged_calm_time_handshake_verifies_nobody",
    ],
    "a huge --ttl, a ttl past a year in the state file": [
        "tests/unit/test_cli.py::test_a_ttl_past_a_year_is_refused_before_anything_is_sent",
        "tests/unit/test_daemon_state.py::test_a_saved_expiry_past_the_longest_ttl_is_cut_to_it",
        "tests/bpf/test_addrtable.py::test_a_record_the_kernel_cannot_hold_never_enters_the_model",
    ],
    "idle and hostile clients of the metrics port": [
        "tests/integration/test_daemon.py::test_the_cli_answers_while_2000_idle_connections_hold_the_metrics_port",
        "tests/unit/test_metrics_http.py::test_connections_beyond_the_cap_are_answered_busy_and_closed",
        "tests/unit/test_metrics_http.py::test_an_idle_client_is_cut_off_at_the_deadline",
        "tests/unit/test_metrics_http.py::test_a_client_that_trickles_its_request_is_cut_off_at_the_deadline",
    ],
    "every map full: operator bans, automatic bans, a reload's commit": [
        "tests/bpf/test_daemon_mapviews.py::test_an_operator_ban_refused_for_a_full_map_is_not_listed_nor_saved",
        "tests/bpf/test_addrtable.py::test_a_commit_refused_for_capacity_leaves_model_and_kernel_as_before",
        "tests/bpf/test_daemon_reload.py::test_a_reload_failing_at_commit_keeps_the_previous_limits_config_and_prefixes",
        "tests/unit/test_control_enforce.py::test_a_full_rule_table_refuses_the_least_important",
    ],
    "a wide, spoofable allow entry": [
        "tests/unit/test_policy_load.py::test_a_wide_allow_entry_warns_that_forged_floods_pass_it",
        "tests/unit/test_control_controller.py::test_never_bans_allowlisted_infrastructure_or_protected_sources",
    ],
    "a corrupt, foreign or partly bad state file": [
        "tests/unit/test_daemon_state.py::test_an_unreadable_file_is_kept_aside_and_the_agent_starts_without_it",
        "tests/unit/test_daemon_state.py::test_an_unknown_version_or_shape_is_kept_aside",
        "tests/unit/test_daemon_state.py::test_each_entry_is_checked_on_its_own_and_the_valid_ones_are_restored",
        "tests/unit/test_daemon_state.py::test_restore_never_guesses_a_kind",
        "tests/bpf/test_daemon_restore.py::test_saved_records_that_do_not_fit_are_left_out_not_fatal",
    ],
    "state written every tick, reasons without bound": [
        "tests/integration/test_daemon.py::test_the_state_file_is_written_when_something_changes_not_every_tick",
        "tests/unit/test_daemon_state.py::test_changes_are_written_at_most_once_a_second",
        "tests/unit/test_daemon_supervisor.py::test_a_save_drops_reason_texts_no_record_refers_to",
    ],
    "a SYN in a fragment": ["tests/bpf/test_synauth.py::test_a_fragmented_syn_is_authenticated_too"],
    "links that are not plain Ethernet (PPPoE, MPLS, tun)": [
        "tests/bpf/test_synauth.py::test_a_syn_over_pppoe_is_challenged_in_its_session",
        "tests/bpf/test_loader_errors.py::test_a_link_without_ethernet_frames_is_refused",
    ],
    "work under the agent's lock (scrapes, explain)": [
        "tests/bpf/test_addrtable.py::test_ban_counts_walk_the_records_only_after_a_change",
        "tests/unit/test_metrics_http.py::test_scrapes_are_served_one_at_a_time",
        "tests/bpf/test_daemon_mapviews.py::test_explain_finds_the_buckets_the_program_made_for_both_families",
    ],
    "policy input bombs: aliases, devices, FIFOs, huge files, tags": [
        "tests/unit/test_policy_hostile.py::test_an_alias_bomb_stops_at_the_node_cap",
        "tests/unit/test_policy_hostile.py::test_an_include_naming_a_device_is_refused",
        "tests/unit/test_policy_hostile.py::test_an_include_naming_a_fifo_is_refused_without_waiting_for_a_writer",
        "tests/unit/test_policy_hostile.py::test_a_prefix_file_naming_a_device_or_fifo_is_refused",
        "tests/unit/test_policy_hostile.py::test_an_oversized_policy_file_is_refused_unread",
        "tests/unit/test_policy_hostile.py::test_unknown_tags_and_bad_typed_values_are_policy_errors",
        "tests/integration/test_daemon.py::test_notify_protocol",
    ],
    "a second agent": [
        "tests/unit/test_daemon_supervisor.py::test_a_second_agent_refuses_to_start_before_touching_socket_or_pins",
        "tests/unit/test_daemon_supervisor.py::test_a_second_agent_on_the_same_pin_root_refuses_even_with_its_own_socket",
        "tests/unit/test_daemon_api.py::test_a_second_server_never_takes_a_live_socket",
    ],
    "the hook: writable by others, hanging, flooding stderr, escaping its group": [
        "tests/unit/test_control_hook.py::test_a_hook_others_could_write_is_refused",
        "tests/unit/test_control_hook.py::test_a_hook_in_a_directory_others_could_write_is_refused",
        "tests/unit/test_control_hook.py::test_a_slow_hook_is_killed_at_its_timeout_with_its_children",
        "tests/unit/test_control_hook.py::test_a_grandchild_that_leaves_the_group_is_killed_too",
        "tests/unit/test_control_hook.py::test_a_hook_that_floods_stderr_costs_a_bounded_tail",
        "tests/unit/test_control_hook.py::test_a_hanging_hook_does_not_stall_the_ticks",
    ],
    "the systemd sandbox and its system-call filter": [
        "tests/integration/test_systemd_unit.py::test_required_directive",
        "tests/integration/test_systemd_unit.py::test_unit_boots_under_systemd",
    ],
    "control-socket clients: too many, slow, malformed; bans of everything; detach under a live agent": [
        "tests/unit/test_daemon_api.py::test_an_oversized_line_is_refused_in_one_sentence",
        "tests/unit/test_daemon_api.py::test_malformed_requests_are_refused",
        "tests/unit/test_daemon_api.py::test_unknown_verbs_wrong_types_and_bugs_are_answered",
        "tests/unit/test_daemon_api.py::test_a_slow_client_is_cut_off_by_the_deadline_for_the_whole_line",
        "tests/unit/test_daemon_api.py::test_clients_beyond_the_cap_are_told_at_once_and_served_once_a_slot_frees",
        "tests/bpf/test_daemon_mapviews.py::test_operator_bans_of_everything_or_of_infrastructure_need_force",
        "tests/unit/test_cli.py::test_detach_never_removes_pins_while_the_agent_runs_but_does_not_answer",
    ],
    "SIGHUP during the build; SYN-ACKs aimed at one victim from many groups": [
        "tests/integration/test_daemon.py::test_sighup_during_the_build_is_a_reload_not_a_death",
        "tests/bpf/test_synauth.py::test_challenges_are_capped_for_all_groups_together",
    ],
    "a notify receiver that stops reading": [
        "tests/unit/test_daemon_sdnotify.py::test_a_receiver_that_reads_nothing_never_blocks_the_daemon",
    ],
    "an interface removed and re-added under load, or vanishing midway": [
        "tests/integration/test_daemon.py::test_interface_created_later_and_recreated_gets_the_program",
        "tests/integration/test_attach.py::test_interface_vanishing_midway_is_reported",
    ],
    "bpffs missing, kernel headers missing": [
        "tests/bpf/test_loader_errors.py::test_pin_dir_not_on_bpffs",
        "tests/bpf/test_loader_errors.py::test_missing_kernel_headers_names_the_package",
        "tests/bpf/test_loader_errors.py::test_header_clang_cannot_find_is_reported_as_missing_headers",
    ],
    "the daemon SIGKILLed: mid-attack, during a reload": [
        "tests/integration/test_daemon.py::test_sigkill_leaves_bans_enforced_and_restart_finds_them",
        "tests/integration/test_daemon.py::test_sigkill_during_a_reload_loses_nothing",
        "tests/integration/test_e2e.py::test_killing_the_daemon_mid_attack_lets_everything_expire",
    ],
    "malformed packets": [
        "tests/bpf/test_pipeline.py::test_case",
        "tests/bpf/test_fuzz.py::test_fuzz_every_packet_gets_one_known_verdict",
        "tests/bpf/test_fuzz.py::test_a_seed_replays_the_same_packets",
    ],
}

#: Every test of the fault suite, as pytest node ids without parameters.
FAULT_TESTS = frozenset(t for tests in FAULTS.values() for t in tests)
