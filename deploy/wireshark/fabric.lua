-- Wireshark dissector for the Fabric overlay header (stacks/Fabric.Wire/README.md).
-- Install: copy to ~/.local/lib/wireshark/plugins/ (or run wireshark -X lua_script:fabric.lua).
local fabric = Proto("fabric", "Fabric overlay")

local payload_types = { [0] = "Ethernet", [1] = "Stack control", [2] = "Probe", [3] = "Probe reply", [4] = "Stack-encoded", [5] = "Agent control", [6] = "Capacity train" }

local f_version = ProtoField.uint8("fabric.version", "Version", base.DEC, nil, 0xF0)
local f_flags = ProtoField.uint8("fabric.flags", "Flags", base.HEX, nil, 0x0F)
local f_slot = ProtoField.uint8("fabric.slot", "Stack slot", base.DEC)
local f_type = ProtoField.uint8("fabric.payload_type", "Payload type", base.DEC, payload_types)
local f_stack_len = ProtoField.uint8("fabric.stack_field_len", "Stack field length", base.DEC)
local f_vni = ProtoField.uint24("fabric.vni", "Virtual network id", base.DEC)
local f_reserved = ProtoField.uint8("fabric.reserved", "Reserved", base.HEX)
local f_seq = ProtoField.uint32("fabric.path_seq", "Path sequence", base.DEC)
local f_ts = ProtoField.uint32("fabric.send_ts_us", "Send timestamp (us mod 2^32)", base.DEC)
local f_stack = ProtoField.bytes("fabric.stack_fields", "Stack fields")
fabric.fields = { f_version, f_flags, f_slot, f_type, f_stack_len, f_vni, f_reserved, f_seq, f_ts, f_stack }

local eth = Dissector.get("eth_withoutfcs")

function fabric.dissector(buffer, pinfo, tree)
  if buffer:len() < 16 then return 0 end
  local stack_len = buffer(3, 1):uint()
  if buffer:len() < 16 + stack_len then return 0 end
  pinfo.cols.protocol = "Fabric"
  local t = tree:add(fabric, buffer(0, 16 + stack_len))
  t:add(f_version, buffer(0, 1))
  t:add(f_flags, buffer(0, 1))
  t:add(f_slot, buffer(1, 1))
  t:add(f_type, buffer(2, 1))
  t:add(f_stack_len, buffer(3, 1))
  t:add(f_vni, buffer(4, 3))
  t:add(f_reserved, buffer(7, 1))
  t:add(f_seq, buffer(8, 4))
  t:add(f_ts, buffer(12, 4))
  if stack_len > 0 then t:add(f_stack, buffer(16, stack_len)) end
  local payload_type = buffer(2, 1):uint()
  local rest = 16 + stack_len
  if payload_type == 0 and buffer:len() > rest then
    eth:call(buffer(rest):tvb(), pinfo, tree)
  end
  return buffer:len()
end

DissectorTable.get("udp.port"):add(47110, fabric)
